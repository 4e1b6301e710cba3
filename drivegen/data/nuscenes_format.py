"""Writing nuScenes-format dataroots: tokens, the static tables, the map expansion, and a whole
dataroot from a `conditions.Scene` (the labels of generated clips).

The one nuScenes writer: `drivegen.data.sample_data` (the bundled sample log) and
`drivegen.generate` (generated clips' labels) both call `write_scene_dataroot`, so both write what
nuscenes-devkit 1.2.0 loads: `NuScenes(version, dataroot)`
needs all 13 tables and `map.json` needs `log_tokens`; `NuScenesMap` reads
`maps/expansion/<location>.json` (map version >= 1.3) and accepts only its four location names.

Conventions: nuScenes sizes are (width, length, height) where the scene model has (length,
width, height); rotations are (w, x, y, z) quaternions; timestamps in microseconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from chopgrad_core.atomic import write_png, write_text
from drivegen.errors import ConfigError

__all__ = ["ATTRIBUTES", "NUSCENES_CATEGORY", "NUSCENES_LOCATIONS", "MapExpansion", "StaticAnnotation", "Tokens",
           "attribute_names", "dump_json", "matrix_quaternion", "open_ring", "static_tables", "write_scene_dataroot",
           "yaw_quaternion"]

# The nuScenes category each box class is written with (conditions.taxonomy maps them back).
NUSCENES_CATEGORY = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "construction_vehicle": "vehicle.construction",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "barrier": "movable_object.barrier",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
}
ATTRIBUTES = ("vehicle.moving", "vehicle.parked", "vehicle.stopped", "pedestrian.moving", "pedestrian.standing",
              "pedestrian.sitting_lying_down", "cycle.with_rider", "cycle.without_rider")
NUSCENES_LOCATIONS = ("singapore-onenorth", "singapore-hollandvillage", "singapore-queenstown", "boston-seaport")


class Tokens:
    """Deterministic nuScenes-style 32-hex tokens from names."""

    def __init__(self, seed: int | str):
        self.seed = seed

    def __call__(self, *parts: object) -> str:
        key = "/".join(str(p) for p in (self.seed, *parts))
        return hashlib.md5(key.encode()).hexdigest()


def yaw_quaternion(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def matrix_quaternion(R_33: np.ndarray) -> list[float]:
    """Rotation matrix -> (w, x, y, z) with w >= 0."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(R_33, np.float64)).as_quat()
    q = np.array([w, x, y, z]) * (1.0 if w >= 0 else -1.0)
    return [float(v) for v in q]


def dump_json(path: Path, obj) -> None:
    # Sorted keys and fixed float formatting keep the output byte-identical across runs.
    write_text(path, json.dumps(obj, indent=0, sort_keys=True))


def attribute_names(cls: str, moving: bool) -> list[str]:
    """The nuScenes attributes a box of class `cls` gets."""
    if cls == "pedestrian":
        return ["pedestrian.moving" if moving else "pedestrian.standing"]
    if cls in ("bicycle", "motorcycle"):
        return ["cycle.with_rider"]
    if cls in ("barrier", "traffic_cone"):
        return []
    return ["vehicle.moving" if moving else "vehicle.parked"]


def static_tables(tok: Tokens, categories: Sequence[str]) -> dict[str, list]:
    """category, attribute and visibility tables."""
    return {
        "category": [{"token": tok("category", name), "name": name, "description": f"nuScenes category {name}"}
                     for name in categories],
        "attribute": [{"token": tok("attribute", a), "name": a, "description": a} for a in ATTRIBUTES],
        "visibility": [{"token": str(i + 1), "level": lvl, "description": f"visibility of whole object is {lvl}"}
                       for i, lvl in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))],
    }


def open_ring(ring: np.ndarray) -> np.ndarray:
    """A polygon ring without its closing point (nuScenes and Waymo polygons are open)."""
    return ring[:-1] if len(ring) > 1 and np.allclose(ring[0], ring[-1]) else ring


class MapExpansion:
    """A NuScenesMap expansion (version 1.3) being built: nodes, polygons, lines and layers.

    `add_elements` writes scene-model map elements; road_edge has no layer (readers derive it from
    the drivable area); stop lines become 0.4 m wide polygons, as in nuScenes. Callers may add
    structural layers (lanes, road segments) with `polygon` / `line` before `to_json`.
    """

    LAYERS = ("drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway", "stop_line",
              "carpark_area", "road_divider", "lane_divider", "traffic_light", "lane_connector")

    def __init__(self, tok: Tokens) -> None:
        self.tok = tok
        self.nodes: list[dict] = []
        self.polygons: list[dict] = []
        self.lines: list[dict] = []
        self.layers: dict[str, list] = {name: [] for name in self.LAYERS}
        self.drivable_area_token = ""

    def node_tokens(self, pts: np.ndarray) -> list[str]:
        out = []
        for x, y in pts:
            token = self.tok("node", len(self.nodes))
            self.nodes.append({"token": token, "x": round(float(x), 4), "y": round(float(y), 4)})
            out.append(token)
        return out

    def polygon(self, exterior: np.ndarray, holes=()) -> str:
        token = self.tok("polygon", len(self.polygons))
        self.polygons.append({
            "token": token,
            "exterior_node_tokens": self.node_tokens(open_ring(exterior)),
            "holes": [{"node_tokens": self.node_tokens(open_ring(h))} for h in holes],
        })
        return token

    def line(self, pts: np.ndarray) -> str:
        token = self.tok("line", len(self.lines))
        self.lines.append({"token": token, "node_tokens": self.node_tokens(pts)})
        return token

    def add_elements(self, map_elements) -> None:
        import shapely

        tok, layers = self.tok, self.layers
        drivable = []
        for el in map_elements:
            n = len(layers[el.cls]) if el.cls in layers else 0
            rec_token = tok(el.cls, n)
            if el.cls == "drivable_area":
                drivable.append(self.polygon(el.points, el.holes))
            elif el.cls in ("ped_crossing", "walkway", "carpark_area"):
                rec = {"token": rec_token, "polygon_token": self.polygon(el.points, el.holes)}
                if el.cls == "ped_crossing":
                    rec["road_segment_token"] = ""
                if el.cls == "carpark_area":
                    rec.update(orientation=0.0, road_block_token="")
                layers[el.cls].append(rec)
            elif el.cls == "stop_line":
                rect = shapely.LineString(el.points).buffer(0.2, cap_style="flat")
                layers["stop_line"].append({
                    "token": rec_token, "polygon_token": self.polygon(np.asarray(rect.exterior.coords)),
                    "stop_line_type": "STOP_SIGN", "ped_crossing_tokens": [], "traffic_light_tokens": [],
                    "road_block_token": "",
                })
            elif el.cls == "road_divider":
                layers["road_divider"].append({"token": rec_token, "line_token": self.line(el.points),
                                               "road_segment_token": ""})
            elif el.cls == "lane_divider":
                line_token = self.line(el.points)
                segs = [{"node_token": t, "segment_type": "DOUBLE_DASHED_WHITE"} for t in self.lines[-1]["node_tokens"]]
                layers["lane_divider"].append({"token": rec_token, "line_token": line_token,
                                               "lane_divider_segments": segs})
            # road_edge: no nuScenes layer (derived from the drivable area by readers).
        self.drivable_area_token = tok("drivable_area", 0)
        layers["drivable_area"].append({"token": self.drivable_area_token, "polygon_tokens": drivable})

    def to_json(self) -> dict:
        return {
            "version": "1.3",
            "canvas_edge": [3000.0, 3000.0],
            "node": self.nodes,
            "polygon": self.polygons,
            "line": self.lines,
            **self.layers,
            "arcline_path_3": {},
            "connectivity": {},
        }


@dataclass(frozen=True)
class StaticAnnotation:
    """An annotated object that is not one of the scene's agents (a category outside the box taxonomy,
    say), at rest: annotated at every keyframe with no attributes."""

    category: str
    """nuScenes category name (need not map to a box class: readers count it as unmapped)."""
    center: Sequence[float]
    """World (x, y, z), metres."""
    size: Sequence[float]
    """(length, width, height), metres (written as nuScenes' (width, length, height))."""
    yaw: float
    """Heading about world z, radians."""


def _rotation_quaternion(R_33: np.ndarray) -> list[float]:
    """(w, x, y, z) of a rotation; a pure rotation about z goes through its yaw (exact: no
    matrix -> quaternion round-off for the flat-ground poses of synthetic and generated scenes)."""
    R = np.asarray(R_33, np.float64)
    if R[2, 2] == 1.0 and not np.any(R[2, :2]) and not np.any(R[:2, 2]):
        return yaw_quaternion(float(np.arctan2(R[1, 0], R[0, 0])))
    return matrix_quaternion(R)


def write_scene_dataroot(
    dataroot: Path,
    scene,
    *,
    version: str,
    scene_name: str,
    location: str,
    keyframe_every: int = 1,
    description: str = "",
    image_file: Callable[[str, int], str] | None = None,
    image_hw: tuple[int, int] | None = None,
    moving_mps: float = 0.2,
    tokens: Tokens | None = None,
    camera_poses: Mapping[str, Sequence[tuple[int, np.ndarray]]] | None = None,
    calibration: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    categories: Sequence[str] | None = None,
    extra_annotations: Sequence[StaticAnnotation] = (),
    map_layers: Callable[[MapExpansion], None] | None = None,
    num_lidar_pts: int = 1,
    log_fields: Mapping[str, str] | None = None,
    keyframes: Sequence[int] | None = None,
) -> dict[str, list]:
    """Write `scene` (a conditions.Scene) as a nuScenes dataroot under `dataroot`; return the tables.

    The one nuScenes writer: the bundled sample log (`drivegen.data.sample_data`) and generated
    clips' labels (`drivegen.generate`) both come from here.

    One sample_data (and ego pose) per camera and frame; frames 0, keyframe_every, ... are keyframes
    (samples) carrying one sample_annotation per agent present (agents are linked by track id
    across keyframes into instances, in track-id order; `extra_annotations` follow as further
    instances). `image_file(camera, frame)` names each image relative to the dataroot (the caller
    writes the files); `image_hw` is their size (intrinsics are rescaled to it from each camera's
    own image size). The map expansion holds the scene's map elements, then whatever
    `map_layers(expansion)` adds (structural layers: lanes, road segments).

    Options for a source-like log (the sample world):
    - `tokens`: the token namespace (default `Tokens(f"{version}/{scene_name}")`);
    - `camera_poses[camera]`: (timestamp_us, ego_to_world) of that camera's image at each frame
      (real rigs fire cameras one after the other); default: the frame's own;
    - `calibration[camera]`: (translation, rotation wxyz) written as given (default: from
      cam_to_ego; a matrix -> quaternion round trip would change the last bits);
    - `categories`: the category table (default: the ten written for box classes);
    - `num_lidar_pts`: written on every annotation; `log_fields` override the log record;
    - `keyframes`: explicit keyframe indices (frames before the first or after the last are
      sweeps outside the annotated span, as at the ends of real nuScenes scenes).

    No lidar exists for a generated clip: num_lidar_pts is 1 by default so that the devkit's
    detection evaluation, which drops boxes without points, keeps every box; visibility is not
    estimated (token '4', v80-100, for every box).
    """
    from conditions.geometry import scale_intrinsics

    if location not in NUSCENES_LOCATIONS:
        raise ConfigError(f"location = {location!r}; NuScenesMap accepts only {list(NUSCENES_LOCATIONS)}")
    tok = tokens or Tokens(f"{version}/{scene_name}")
    frames = scene.frames
    T = len(frames)
    if keyframes is not None:
        keyframes = sorted(int(k) for k in keyframes)
    else:
        keyframes = list(range(0, T, keyframe_every))
        if keyframes[-1] != T - 1:
            keyframes.append(T - 1)  # the scene spans all frames: the last one is annotated too
    if categories is None:
        categories = [NUSCENES_CATEGORY[c] for c in NUSCENES_CATEGORY]
    tables: dict[str, list] = static_tables(tok, categories)
    log_token, scene_token, map_token = tok("log"), tok("scene"), tok("map")
    sample_tokens = [tok("sample", f) for f in keyframes]
    sample_of_frame = dict(zip(keyframes, sample_tokens))

    # 1. Sensors and calibration (constant over the scene).
    tables["sensor"] = [{"token": tok("sensor", c.name), "channel": c.name, "modality": "camera"} for c in scene.cameras]
    tables["calibrated_sensor"] = []
    for cam in scene.cameras:
        hw = tuple(image_hw) if image_hw is not None else cam.image_size
        K = scale_intrinsics(cam.intrinsics, cam.image_size, hw)
        if calibration is not None and cam.name in calibration:
            translation, rotation = (list(v) for v in calibration[cam.name])
        else:
            translation, rotation = [float(v) for v in cam.cam_to_ego[:3, 3]], matrix_quaternion(cam.cam_to_ego[:3, :3])
        tables["calibrated_sensor"].append({
            "token": tok("calibrated_sensor", cam.name), "sensor_token": tok("sensor", cam.name),
            "translation": translation, "rotation": rotation,
            "camera_intrinsic": [[round(float(v), 6) for v in row] for row in K],
        })
    tables["log"] = [{"token": log_token, "logfile": scene_name, "vehicle": "drivegen-generated",
                      "date_captured": "2026-01-01", "location": location, **(log_fields or {})}]
    tables["map"] = [{"token": map_token, "log_tokens": [log_token], "category": "semantic_prior",
                      "filename": f"maps/{map_token}.png"}]
    tables["scene"] = [{"token": scene_token, "log_token": log_token, "nbr_samples": len(keyframes),
                        "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                        "name": scene_name, "description": description}]
    tables["sample"] = [
        {"token": s, "timestamp": frames[f].timestamp_us, "scene_token": scene_token,
         "prev": sample_tokens[i - 1] if i > 0 else "", "next": sample_tokens[i + 1] if i + 1 < len(keyframes) else ""}
        for i, (f, s) in enumerate(zip(keyframes, sample_tokens))
    ]

    # 2. Sample data and ego poses: one record per camera image; ego_pose tokens equal
    # sample_data tokens, as in nuScenes. Non-key frames belong to their nearest keyframe's sample.
    tables["sample_data"], tables["ego_pose"] = [], []
    for cam in scene.cameras:
        hw = tuple(image_hw) if image_hw is not None else cam.image_size
        sd_tokens = [tok("sample_data", cam.name, i) for i in range(T)]
        poses = camera_poses[cam.name] if camera_poses is not None else [(f.timestamp_us, f.ego_to_world) for f in frames]
        if len(poses) != T:
            raise ConfigError(f"camera_poses[{cam.name!r}] has {len(poses)} entries; the scene has {T} frames")
        for i, (t, pose) in enumerate(poses):
            nearest = keyframes[int(np.argmin([abs(i - k) for k in keyframes]))]
            tables["ego_pose"].append({"token": sd_tokens[i], "timestamp": int(t),
                                       "translation": [float(v) for v in pose[:3, 3]],
                                       "rotation": _rotation_quaternion(pose[:3, :3])})
            tables["sample_data"].append({
                "token": sd_tokens[i], "sample_token": sample_of_frame[nearest], "ego_pose_token": sd_tokens[i],
                "calibrated_sensor_token": tok("calibrated_sensor", cam.name), "timestamp": int(t),
                "fileformat": "jpg", "is_key_frame": i in sample_of_frame, "height": int(hw[0]), "width": int(hw[1]),
                "filename": image_file(cam.name, i) if image_file else f"samples/{cam.name}/{scene_name}__{cam.name}__{i}.jpg",
                "prev": sd_tokens[i - 1] if i > 0 else "", "next": sd_tokens[i + 1] if i + 1 < T else "",
            })

    # 3. Instances and annotations: one instance per track id, annotated at each keyframe it is in;
    # then one per extra (static) annotation, with the next track numbers.
    tracks: dict[int, list[tuple[int, int]]] = {}  # track id -> [(keyframe, row in that frame's agents)]
    for f in keyframes:
        for row, track in enumerate(frames[f].agents.track_ids):
            tracks.setdefault(int(track), []).append((f, row))
    tables["instance"], tables["sample_annotation"] = [], []

    def annotate(track: int, category: str, boxes: list[tuple[int, list[float], list[float], float, list[str]]]):
        """boxes: (keyframe, centre, (l, w, h), yaw, attribute names) per annotated keyframe."""
        inst = tok("instance", track)
        ann_tokens = [tok("sample_annotation", track, f) for f, *_ in boxes]
        for j, (f, centre, (l, w, h), yaw, attributes) in enumerate(boxes):
            tables["sample_annotation"].append({
                "token": ann_tokens[j], "sample_token": sample_of_frame[f], "instance_token": inst,
                "visibility_token": "4", "attribute_tokens": [tok("attribute", a) for a in attributes],
                "translation": [float(x) for x in centre], "size": [float(w), float(l), float(h)],
                "rotation": yaw_quaternion(float(yaw)), "prev": ann_tokens[j - 1] if j > 0 else "",
                "next": ann_tokens[j + 1] if j + 1 < len(boxes) else "", "num_lidar_pts": int(num_lidar_pts),
                "num_radar_pts": 0,
            })
        tables["instance"].append({"token": inst, "category_token": tok("category", category),
                                   "nbr_annotations": len(boxes), "first_annotation_token": ann_tokens[0],
                                   "last_annotation_token": ann_tokens[-1]})

    for track, seen in sorted(tracks.items()):
        cls = frames[seen[0][0]].agents.classes[seen[0][1]]
        boxes = []
        for f, row in seen:
            agents = frames[f].agents
            v = agents.velocity[row] if agents.velocity is not None else np.array([np.nan, np.nan])
            moving = bool(np.isfinite(v).all() and np.linalg.norm(v) > moving_mps)
            boxes.append((f, agents.center[row], agents.size[row], agents.yaw[row], attribute_names(cls, moving)))
        annotate(track, NUSCENES_CATEGORY[cls], boxes)
    next_track = max(tracks, default=-1) + 1
    for j, extra in enumerate(extra_annotations):
        annotate(next_track + j, extra.category,
                 [(f, list(extra.center), list(extra.size), extra.yaw, []) for f in keyframes])

    # 4. Files: tables, map expansion, the placeholder semantic prior (the devkit's map table needs one).
    for name, table in tables.items():
        dump_json(dataroot / version / f"{name}.json", table)
    expansion = MapExpansion(tok)
    expansion.add_elements(scene.map_elements)
    if map_layers is not None:
        map_layers(expansion)
    dump_json(dataroot / "maps" / "expansion" / f"{location}.json", expansion.to_json())
    write_png(dataroot / "maps" / f"{map_token}.png", np.zeros((8, 8), np.uint8))
    return tables
