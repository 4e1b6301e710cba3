"""nuScenes scene -> `conditions.Scene`, through nuscenes-devkit (`NuScenes`, `NuScenesMap`).

Frames: every CAM_FRONT image (keyframes and sweeps, ~12 Hz) between the scene's first and last
annotated keyframe; sweeps outside that span are left out because their boxes could only be
extrapolated. Each other camera contributes its nearest image in time (nuScenes cameras fire
within ~50 ms of each other); `Frame.ego_to_world` is CAM_FRONT's ego pose.

Boxes: annotations exist at keyframes (2 Hz). A frame between keyframes k0 and k1 gets
- tracks annotated at both: centre and size linearly interpolated, yaw along the shortest arc,
  velocity (c1 - c0) / (t1 - t0);
- tracks annotated at one of them only (appearing or leaving): that box, held, while the frame is
  nearer to its keyframe than to the other (so tracks do not blink); velocity NaN.
Categories go through `conditions.taxonomy.map_nuscenes_categories`; the unmapped ones are
counted per annotation in `scene.source.unmapped_classes` and, per keyframe, in `dropped`.
Every nuScenes annotation is a 3D box (`dropped.labels_without_box` is 0); the CAM_FRONT sweeps
left out are `dropped.frames_outside_span`; image files missing from the dataroot are
`dropped.cameras_without_images` (per frame). Track id i is the i-th mapped
instance in instance-table order; `track_keys[i]` is its instance token.

Map: the log's location from `NuScenesMap` (maps/expansion/<location>.json, version >= 1.3),
the records within `MAP_MARGIN_M` of the ego path. A location without an expansion file (or with
nothing near the ego path) gives a scene without map elements: its map channels are empty and
`dropped.no_map` says why (an expansion that exists but cannot be loaded is a LogError). Polygon layers (drivable_area, ped_crossing,
walkway, carpark_area) stay polygons; road_divider / lane_divider are lines; stop lines, polygons
in nuScenes, become their long centre line; road_edge, which has no layer, is every ring of the
drivable area. Structural layers (lane, road_segment, road_block, ...) are not drawn.

Shape legend: N boxes, T frames, K keyframes, P points.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from pathlib import Path

import numpy as np

from conditions import Agents, Camera, Frame, MapElement, Scene, SceneSource
from conditions.geometry import quaternion_to_matrix, rigid_transform
from conditions.taxonomy import NUSCENES_MAP_LAYER_TO_CLASS, map_nuscenes_categories
from drivegen.errors import LogError
from drivegen.data.ingest import Dropped
from drivegen.data.ingest.images import decode_jpeg

__all__ = ["NUSCENES_TABLES", "MAP_MARGIN_M", "NuScenesReader", "interpolate_yaw"]

NUSCENES_TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
                   "log", "scene", "sample", "sample_data", "sample_annotation", "map")
MAP_MARGIN_M = 120.0  # > conditions' default map_range_m (80 m) plus the rig's reach
_FRONT = "CAM_FRONT"


def interpolate_yaw(yaw0: np.ndarray, yaw1: np.ndarray, alpha: float) -> np.ndarray:
    """Yaw between yaw0 and yaw1 along the shortest arc (what slerp of yaw-only quaternions gives)."""
    delta = np.arctan2(np.sin(yaw1 - yaw0), np.cos(yaw1 - yaw0))
    out = yaw0 + alpha * delta
    return np.arctan2(np.sin(out), np.cos(out))


def _pose(rotation_wxyz, translation) -> np.ndarray:
    return rigid_transform(quaternion_to_matrix(rotation_wxyz), translation)


def _yaw(rotation_wxyz) -> float:
    R = quaternion_to_matrix(rotation_wxyz)
    return float(np.arctan2(R[1, 0], R[0, 0]))


@functools.lru_cache(maxsize=2)
def _load_nuscenes(dataroot: str, version: str, stamp: float):
    """The devkit database (tens of seconds for trainval: shared by every scene of a dataroot).
    `stamp` (scene.json mtime) keys the cache so a rewritten dataroot is reloaded."""
    from nuscenes.nuscenes import NuScenes

    with contextlib.redirect_stdout(io.StringIO()):
        return NuScenes(version=version, dataroot=dataroot, verbose=False)


@functools.lru_cache(maxsize=4)
def _load_map(dataroot: str, location: str, stamp: float):
    from nuscenes.map_expansion.map_api import NuScenesMap

    with contextlib.redirect_stdout(io.StringIO()):
        return NuScenesMap(dataroot=dataroot, map_name=location)


class NuScenesReader:
    """One nuScenes scene as a LogReader (see the module docstring for the conventions)."""

    def __init__(self, ref):
        self.ref = ref
        self._log = ref.name
        dataroot = Path(ref.path)
        # 1. Tables present (the devkit would fail with a bare FileNotFoundError or KeyError).
        version = ref.version or self._guess_version(dataroot)
        table_root = dataroot / version
        if not table_root.is_dir():
            raise LogError(self._log, f"nuScenes version folder {str(table_root)!r} does not exist; check "
                                      f"LogRef.path (the dataroot) and LogRef.version")
        missing = [t for t in NUSCENES_TABLES if not (table_root / f"{t}.json").is_file()]
        if missing:
            raise LogError(self._log, f"nuScenes table(s) {', '.join(m + '.json' for m in missing)} missing from "
                                      f"{str(table_root)!r}; the devkit needs all 13 tables: re-copy the "
                                      f"{version} metadata")
        try:
            nusc = _load_nuscenes(str(dataroot), version, os.path.getmtime(table_root / "scene.json"))
        except Exception as exc:  # the devkit raises AssertionError / KeyError / JSONDecodeError
            raise LogError(self._log, f"nuscenes-devkit cannot load {str(table_root)!r}: "
                                      f"{type(exc).__name__}: {exc}; re-copy the {version} metadata") from None
        self._nusc, self._dataroot = nusc, dataroot

        # 2. The scene and its camera image chains.
        scenes = {s["name"]: s for s in nusc.scene}
        if ref.name not in scenes:
            raise LogError(self._log, f"no scene {ref.name!r} in {str(table_root)!r}; it has "
                                      f"{sorted(scenes)[:10]}{' ...' if len(scenes) > 10 else ''}")
        scene_rec = scenes[ref.name]
        samples = self._samples(scene_rec)
        first = samples[0]
        channels = [ch for ch, tok in first["data"].items()
                    if nusc.get("sample_data", tok)["sensor_modality"] == "camera"]
        if _FRONT not in channels:
            raise LogError(self._log, f"scene {ref.name!r} has no {_FRONT} images (cameras: {channels}); frames "
                                      f"are timed by {_FRONT}: a nuScenes camera log needs it")
        channels = [_FRONT] + [c for c in channels if c != _FRONT]
        chains = {ch: self._chain(first["data"][ch], scene_rec["token"]) for ch in channels}

        # 3. Frames: CAM_FRONT images within the annotated span; nearest image of each other camera.
        key_t = np.array([s["timestamp"] for s in samples], dtype=np.int64)
        # The span runs from the first to the last keyframe CAM_FRONT image (sample timestamps are
        # the lidar's, a few ms away from the camera's).
        t_lo, t_hi = (nusc.get("sample_data", s["data"][_FRONT])["timestamp"] if _FRONT in s["data"] else s["timestamp"]
                      for s in (samples[0], samples[-1]))
        front = [sd for sd in chains[_FRONT] if t_lo <= sd["timestamp"] <= t_hi]
        if not front:
            raise LogError(self._log, f"scene {ref.name!r} has no {_FRONT} image between its first and last sample")
        frame_t = np.array([sd["timestamp"] for sd in front], dtype=np.int64)
        self._files: dict[str, list[str]] = {_FRONT: [sd["filename"] for sd in front]}
        for ch in channels[1:]:
            t_ch = np.array([sd["timestamp"] for sd in chains[ch]], dtype=np.int64)
            self._files[ch] = [chains[ch][i]["filename"] for i in _nearest(t_ch, frame_t)]

        # 4. Cameras (calibration is constant over a scene).
        cameras = []
        for ch in channels:
            sd = chains[ch][0]
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            if not cs.get("camera_intrinsic"):
                raise LogError(self._log, f"camera {ch} has no camera_intrinsic in calibrated_sensor "
                                          f"{cs['token']!r}; re-copy calibrated_sensor.json")
            cameras.append(Camera(name=ch, intrinsics=np.asarray(cs["camera_intrinsic"], np.float64),
                                  cam_to_ego=_pose(cs["rotation"], cs["translation"]),
                                  image_size=(int(sd["height"]), int(sd["width"]))))

        # 5. Boxes, interpolated per frame.
        self.track_keys, per_key, unmapped, unmapped_per_key = self._keyframe_boxes(samples)
        frames = []
        for sd, t in zip(front, frame_t):
            ego = nusc.get("ego_pose", sd["ego_pose_token"])
            frames.append(Frame(timestamp_us=int(t), ego_to_world=_pose(ego["rotation"], ego["translation"]),
                                agents=self._agents_at(int(t), key_t, per_key)))

        # 6. Map around the ego path.
        log_rec = nusc.get("log", scene_rec["log_token"])
        ego_xy = np.array([f.ego_to_world[:2, 3] for f in frames])
        map_elements, no_map = self._map(log_rec["location"], ego_xy.min(0) - MAP_MARGIN_M,
                                         ego_xy.max(0) + MAP_MARGIN_M)

        self.scene = Scene(cameras=tuple(cameras), frames=tuple(frames), map_elements=map_elements,
                           source=SceneSource(dataset="nuscenes", scene_id=ref.name, unmapped_classes=unmapped))
        self.has_images = any((dataroot / files[0]).is_file() for files in self._files.values())

        # 7. What was left out: unmapped annotations at their keyframe's frame, missing image files,
        # sweeps outside the annotated span, the map.
        key_frame = _nearest(frame_t, np.array([nusc.get("sample_data", s["data"][_FRONT])["timestamp"]
                                                 if _FRONT in s["data"] else s["timestamp"] for s in samples]))
        per_frame: list[dict[str, int]] = [{} for _ in frames]
        for k, counts in zip(key_frame, unmapped_per_key):
            for name, n in counts.items():
                per_frame[k][name] = per_frame[k].get(name, 0) + n
        missing = tuple(tuple(ch for ch in channels if not (dataroot / self._files[ch][i]).is_file())
                        for i in range(len(frames)))
        self.dropped = Dropped(unmapped_classes=tuple(per_frame), labels_without_box=(0,) * len(frames),
                               cameras_without_images=missing, frames_outside_span=len(chains[_FRONT]) - len(front),
                               no_map=no_map)

    # -- image access ---------------------------------------------------------------------------

    def image(self, camera: str, frame: int) -> np.ndarray:
        if camera not in self._files:
            raise LogError(self._log, f"camera {camera!r} is not in this scene; cameras: {list(self._files)}")
        if not isinstance(frame, (int, np.integer)) or not 0 <= frame < len(self.scene.frames):
            raise LogError(self._log, f"frame {frame!r} is outside the scene's {len(self.scene.frames)} frames")
        path = self._dataroot / self._files[camera][frame]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LogError(self._log, f"image {str(path)!r} ({camera}, frame {frame}) cannot be read ({exc}); "
                                      f"copy the samples/ and sweeps/ folders into the dataroot") from None
        return decode_jpeg(data, self._log, f"image {str(path)!r} ({camera}, frame {frame})")

    # -- helpers --------------------------------------------------------------------------------

    def _guess_version(self, dataroot: Path) -> str:
        found = sorted(p.parent.name for p in dataroot.glob("v1.*/scene.json"))
        if len(found) != 1:
            raise LogError(self._log, f"LogRef.version is None and {str(dataroot)!r} holds versions {found}; "
                                      f"set LogRef.version (discover_logs does)")
        return found[0]

    def _samples(self, scene_rec: dict) -> list[dict]:
        out, token = [], scene_rec["first_sample_token"]
        while token:
            try:
                rec = self._nusc.get("sample", token)
            except KeyError:
                raise LogError(self._log, f"sample {token!r} of scene {self.ref.name!r} is not in sample.json; "
                                          f"the tables are inconsistent: re-copy the metadata") from None
            out.append(rec)
            token = rec["next"]
        return out

    def _chain(self, token: str, scene_token: str) -> list[dict]:
        """All sample_data of one sensor in the scene, in time order (walks prev, then next)."""
        nusc = self._nusc

        def in_scene(rec):
            return nusc.get("sample", rec["sample_token"])["scene_token"] == scene_token

        rec = nusc.get("sample_data", token)
        before = []
        while rec["prev"] and in_scene(prev := nusc.get("sample_data", rec["prev"])):
            before.append(prev)
            rec = prev
        chain = before[::-1] + [nusc.get("sample_data", token)]
        rec = chain[-1]
        while rec["next"] and in_scene(nxt := nusc.get("sample_data", rec["next"])):
            chain.append(nxt)
            rec = nxt
        return chain

    def _keyframe_boxes(self, samples: list[dict]):
        """Per keyframe {track id: (centre (3,), size (l, w, h), yaw, class)}; track keys; report;
        per keyframe {unmapped category: annotations}."""
        nusc = self._nusc
        anns = [[nusc.get("sample_annotation", a) for a in s["anns"]] for s in samples]
        flat = [a for per in anns for a in per]
        mapping = map_nuscenes_categories([a["category_name"] for a in flat])
        classes = {}
        for a, cls in zip(flat, mapping.classes):
            if cls is not None:
                classes[a["instance_token"]] = cls
        keys = sorted(classes, key=lambda tok: nusc.getind("instance", tok))
        track_of = {tok: i for i, tok in enumerate(keys)}
        unmapped_per_key, i = [], 0
        for per in anns:
            counts: dict[str, int] = {}
            for a in per:
                if mapping.classes[i] is None:
                    counts[a["category_name"]] = counts.get(a["category_name"], 0) + 1
                i += 1
            unmapped_per_key.append(counts)
        per_key = []
        for per in anns:
            boxes = {}
            for a in per:
                if a["instance_token"] in track_of:
                    w, l, h = a["size"]  # nuScenes stores (width, length, height)
                    boxes[track_of[a["instance_token"]]] = (np.asarray(a["translation"], np.float64),
                                                            np.array([l, w, h], np.float64), _yaw(a["rotation"]),
                                                            classes[a["instance_token"]])
            per_key.append(boxes)
        return tuple(keys), per_key, mapping.report, unmapped_per_key

    @staticmethod
    def _agents_at(t: int, key_t: np.ndarray, per_key: list[dict]) -> Agents:
        if len(key_t) == 1:
            s, alpha, pair = 0, 0.0, (per_key[0], per_key[0])
        else:
            s = int(np.clip(np.searchsorted(key_t, t, side="right") - 1, 0, len(key_t) - 2))
            alpha = float(np.clip((t - key_t[s]) / (key_t[s + 1] - key_t[s]), 0.0, 1.0))
            pair = (per_key[s], per_key[s + 1])
        b0, b1 = pair
        dt_s = (key_t[s + 1] - key_t[s]) * 1e-6 if len(key_t) > 1 else 0.0
        rows = []
        for track in sorted(set(b0) | set(b1)):
            if track in b0 and track in b1 and dt_s > 0:
                (c0, z0, y0, cls), (c1, z1, y1, _) = b0[track], b1[track]
                rows.append((track, c0 + alpha * (c1 - c0), z0 + alpha * (z1 - z0),
                             float(interpolate_yaw(y0, y1, alpha)), cls, (c1[:2] - c0[:2]) / dt_s))
            elif track in b0 and (alpha <= 0.5 or track in b1):
                c, z, y, cls = b0[track]
                rows.append((track, c, z, y, cls, np.full(2, np.nan)))
            elif track in b1 and alpha > 0.5:
                c, z, y, cls = b1[track]
                rows.append((track, c, z, y, cls, np.full(2, np.nan)))
        if not rows:
            return Agents.empty()
        return Agents(center=np.stack([r[1] for r in rows]), size=np.stack([r[2] for r in rows]),
                      yaw=np.array([r[3] for r in rows]), classes=tuple(r[4] for r in rows),
                      track_ids=np.array([r[0] for r in rows]), velocity=np.stack([r[5] for r in rows]))

    def _map(self, location: str, lo_2: np.ndarray, hi_2: np.ndarray) -> tuple[tuple[MapElement, ...], str | None]:
        """Map elements near the ego path, and why there are none (None when there are)."""
        path = self._dataroot / "maps" / "expansion" / f"{location}.json"
        if not path.is_file():
            return (), (f"no map expansion {str(path)!r} for location {location!r}: map channels are empty; "
                        f"unpack nuScenes-map-expansion (v1.3 or later) into {str(path.parent)!r}")
        try:
            nmap = _load_map(str(self._dataroot), location, os.path.getmtime(path))
        except Exception as exc:  # outdated map (version < 1.3), unknown location, missing layer
            raise LogError(self._log, f"NuScenesMap cannot load {str(path)!r}: {type(exc).__name__}: {exc}; "
                                      f"use nuScenes-map-expansion v1.3 or later") from None
        nodes = {n["token"]: (n["x"], n["y"]) for n in nmap.node}

        def ring(tokens) -> np.ndarray:
            return np.array([nodes[t] for t in tokens], np.float64).reshape(-1, 2)

        def near(pts: np.ndarray) -> bool:
            return len(pts) > 0 and bool(np.all(pts.max(0) >= lo_2) and np.all(pts.min(0) <= hi_2))

        out: list[MapElement] = []

        def add_polygon(cls: str, poly_token: str) -> None:
            poly = nmap.get("polygon", poly_token)
            ext = ring(poly["exterior_node_tokens"])
            if len(ext) < 3 or not near(ext):
                return
            holes = tuple(h for h in (ring(h["node_tokens"]) for h in poly["holes"]) if len(h) >= 3)
            out.append(MapElement(cls=cls, points=ext, holes=holes))
            if cls == "drivable_area":  # road edges: the drivable area's boundary
                for r in (ext, *holes):
                    out.append(MapElement(cls="road_edge", points=np.vstack([r, r[:1]])))

        for layer, cls in NUSCENES_MAP_LAYER_TO_CLASS.items():
            if cls is None:
                continue
            for rec in getattr(nmap, layer):
                if layer == "drivable_area":
                    for tok in rec["polygon_tokens"]:
                        add_polygon(cls, tok)
                elif layer == "stop_line":
                    line = _long_axis(ring(nmap.get("polygon", rec["polygon_token"])["exterior_node_tokens"]))
                    if line is not None and near(line):
                        out.append(MapElement(cls=cls, points=line))
                elif layer in nmap.non_geometric_line_layers:
                    pts = ring(nmap.get("line", rec["line_token"])["node_tokens"])
                    if len(pts) >= 2 and near(pts):
                        out.append(MapElement(cls=cls, points=pts))
                else:
                    add_polygon(cls, rec["polygon_token"])
        if not out:
            return (), f"map {str(path)!r} has no element within {MAP_MARGIN_M:.0f} m of the ego path"
        return tuple(out), None


def _nearest(sorted_t: np.ndarray, query_t: np.ndarray) -> np.ndarray:
    """Index into sorted_t of the element nearest to each query time (ties: the earlier one)."""
    if len(sorted_t) == 1:
        return np.zeros(len(query_t), dtype=np.int64)
    hi = np.clip(np.searchsorted(sorted_t, query_t), 1, len(sorted_t) - 1)
    return np.where(np.abs(sorted_t[hi - 1] - query_t) <= np.abs(sorted_t[hi] - query_t), hi - 1, hi)


def _long_axis(ring_P2: np.ndarray) -> np.ndarray | None:
    """Centre line (2, 2) along the long side of a stop-line polygon's minimum rotated rectangle."""
    import shapely

    if len(ring_P2) < 3:
        return None
    rect = shapely.Polygon(ring_P2).minimum_rotated_rectangle
    if rect.geom_type != "Polygon":
        return None
    c = np.asarray(rect.exterior.coords)[:4]
    e01, e12 = np.linalg.norm(c[1] - c[0]), np.linalg.norm(c[2] - c[1])
    # Midpoints of the two short sides.
    if e01 >= e12:
        return np.array([(c[1] + c[2]) / 2, (c[3] + c[0]) / 2])[::-1]
    return np.array([(c[0] + c[1]) / 2, (c[2] + c[3]) / 2])
