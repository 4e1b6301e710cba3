"""Bundled sample logs: one synthetic world written as a nuScenes dataroot and a Waymo segment.

    python -m drivegen.data.sample_data [--out datasets/sample] [--image-size H W] [--seed 0] [--force]
                                        [--nuscenes-scenes 3]

The world is `conditions.demo`'s city (map, agents, ego path), moving linearly in time: agent and
ego positions at any timestamp are exact, so a reader's interpolated boxes can be checked against
the truth. Camera JPEGs are `conditions.render_frame` control images of that world (road surface,
paint, class-coloured shaded boxes) plus mild seeded noise, so pixels agree with the annotations.

Written under `--out` (a few MB; skipped when present unless --force; built in a temp folder
next to it, then renamed, so a crash never leaves a half-written sample):
- `nuscenes/`: version `v1.0-drivegen-sample`, the 13 JSON tables, one scene of ~3.5 s: six
  cameras (nuScenes' Boston rig, intrinsics scaled to the image size) with sweeps at 12 Hz and
  keyframes (samples, annotations) at 2 Hz; `maps/expansion/boston-seaport.json` (map version 1.3;
  the devkit accepts only its four location names) and a placeholder semantic-prior PNG (the
  devkit's `map` table needs one; it is not the world's map).
- `nuscenes-0002/`, `nuscenes-0003/` (``nuscenes_scenes``, default 3): the drive continued, one
  dataroot per further scene of ~3.5 s (the ego ~20 m further along the road each time, the agents
  moved on), so that a store of the sample has a held-out scene: `scene-drivegen-0003` is the val
  split of `make train` (``SAMPLE_VAL_LOGS``).
- `waymo/segment-<name>_with_camera_labels.tfrecord`: `dataset_pb2.Frame` records at 10 Hz, five
  cameras, laser_labels on every frame, map_features on the first frame.
- `drivegen_sample.json`: the generator version, seed and image size; an existing folder is reused
  only when they match the request (else StoreError: pass --force).

Each format carries one labelled object outside the box taxonomy (a nuScenes 'animal', a Waymo
TYPE_SIGN) so that readers' unmapped-class reports are exercised; these are not drawn.

Variants (`SampleVariant`, tests only; the default writes the logs above, byte for byte) add what
real logs have and the pipeline must leave out and report: unannotated frames at both ends, a
Waymo segment without map_features or without images, a nuScenes location without its expansion
map, Waymo camera-only 2D labels. `SampleLog.dropped` is what a reader must report for each.

Conventions: world/ego x forward, y left, z up (conditions.geometry); ego origin on the ground in
both formats. Waymo camera frame: x forward, y left, z up (converted with `WAYMO_CAM_FROM_CONDITIONS`).
Timestamps in microseconds. Shape legend: N agents, T frames, H W image size.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from conditions import Agents, Camera, Frame, LayoutConfig, MapElement, Scene, SceneSource, render_frame
from conditions.demo import CITY_TO_WORLD, NUSCENES_CALIBRATION, NUSCENES_CAMERA_ORDER, make_demo_scene, pinhole_camera
from conditions.geometry import quaternion_to_matrix, rigid_transform, scale_intrinsics, yaw_of
from conditions.taxonomy import NUSCENES_CATEGORY_TO_CLASS, map_nuscenes_categories, map_waymo_label_types
from drivegen.errors import DrivegenError, StoreError
from drivegen.data.ingest import LogRef
from drivegen.data.ingest.tfrecord import write_records
from drivegen.data.ingest.waymo import WAYMO_CAM_FROM_CONDITIONS  # p_waymo_cam = A @ p_conditions_cam
from drivegen.data.nuscenes_format import (NUSCENES_CATEGORY, MapExpansion, StaticAnnotation, Tokens, open_ring,
                                           write_scene_dataroot)

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "NUSCENES_VERSION",
    "NUSCENES_LOCATION",
    "NUSCENES_SCENE_NAME",
    "NUSCENES_SCENES",
    "SAMPLE_VAL_LOGS",
    "WAYMO_SEGMENT_NAME",
    "SampleLog",
    "SampleLogs",
    "SampleVariant",
    "sample_waymo_cameras",
    "generate_sample_logs",
]

DEFAULT_IMAGE_SIZE = (144, 256)  # 16:9 like nuScenes' 900 x 1600; keeps the sample at a few MB
NUSCENES_VERSION = "v1.0-drivegen-sample"
NUSCENES_LOCATION = "boston-seaport"  # NuScenesMap asserts the name is one of its four locations
NUSCENES_SCENE_NAME = "scene-drivegen-0001"
NUSCENES_SCENES = 3  # scenes of the drive, one dataroot each (nuscenes/, nuscenes-0002/, ...)
# Held out by `make train` (its store's val split): the last scene of the drive, and the Waymo
# segment (another rig; training uses the nuScenes one).
SAMPLE_VAL_LOGS = ("scene-drivegen-0003", "segment-drivegen-sample-0001_with_camera_labels")
WAYMO_SEGMENT_NAME = "drivegen-sample-0001"

_STAMP_FILE = "drivegen_sample.json"  # what made the folder: checked before reusing it
_STAMP_VERSION = 1  # bump when the generator's output changes
_T0_US = 1_533_151_603_512_404  # the demo scene's first timestamp
_NUM_AGENTS = 40
_NUSCENES_HZ, _NUSCENES_KEY_EVERY, _NUSCENES_FRAMES = 12, 6, 43  # keyframes at 2 Hz, 3.5 s
_NUSCENES_CAMERA_STAGGER_US = 5_000  # real rigs fire cameras one after the other as the lidar turns
_WAYMO_HZ, _WAYMO_FRAMES = 10, 25
_JPEG_QUALITY = 90
_NOISE_STD = 2.0  # mild sensor noise, so that the JPEGs are not flat colour fields
# Waymo labels vehicles, pedestrians, cyclists and signs only: barriers and cones get no label.
_WAYMO_TYPE = {
    "car": 1,
    "truck": 1,
    "construction_vehicle": 1,
    "bus": 1,
    "trailer": 1,
    "motorcycle": 1,
    "bicycle": 4,
    "pedestrian": 2,
}
# Waymo rig: (name, yaw deg, position in the vehicle frame). HFOV ~50 deg like Waymo's front camera.
_WAYMO_RIG = (
    ("FRONT", 0.0, (1.55, 0.0, 2.1)),
    ("FRONT_LEFT", 45.0, (1.50, 0.15, 2.1)),
    ("FRONT_RIGHT", -45.0, (1.50, -0.15, 2.1)),
    ("SIDE_LEFT", 90.0, (1.35, 0.25, 2.1)),
    ("SIDE_RIGHT", -90.0, (1.35, -0.25, 2.1)),
)
_WAYMO_HFOV_DEG = 50.0


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleVariant:
    """Deviations from the default sample logs (all off by default), for tests of what is dropped."""

    unannotated_frames: int = 0
    """Frames without annotations before the first and after the last annotated one, in each log
    (nuScenes: sweeps of every camera; Waymo: records without laser labels)."""
    nuscenes_map: bool = True
    """Write the nuScenes map expansion (false: the location has no expansion map)."""
    waymo_map: bool = True
    """Write the Waymo map_features."""
    waymo_images: bool = True
    """Write the Waymo camera images (false: a conditions-only segment)."""
    waymo_camera_only_labels: int = 0
    """Camera-only 2D labels (no laser label, hence no 3D box) per Waymo record, on FRONT."""

    def __post_init__(self) -> None:
        if not (isinstance(self.unannotated_frames, int) and self.unannotated_frames >= 0):
            raise DrivegenError(f"unannotated_frames = {self.unannotated_frames!r}; expected an int >= 0")


@dataclass(frozen=True)
class SampleLog:
    """What a correct reader of one written log returns, for tests."""

    ref: LogRef
    scene: Scene
    """Expected reader scene: frames at the reader's timestamps, taxonomy classes, track id i is
    `track_keys[i]`, the map as the reader converts it."""
    track_keys: tuple[str, ...]
    """Source id of each track (nuScenes instance token, Waymo label id)."""
    world_classes: dict[str, str]
    """Source id -> the box class the JPEGs draw it with (Waymo labels trucks etc. as vehicles)."""
    keyframes: tuple[int, ...]
    """Frame indices that carry annotations (nuScenes samples; every frame for Waymo)."""
    unmapped: dict[str, int]
    """Expected SceneSource.unmapped_classes."""
    world_map: tuple[MapElement, ...]
    """The map the JPEGs are drawn with (Waymo's map_features hold only part of it)."""
    dropped: dict = field(default_factory=dict)
    """Expected `reader.dropped.summary()`."""


@dataclass(frozen=True)
class SampleLogs:
    root: Path
    nuscenes: SampleLog
    """The first nuScenes scene (``nuscenes/``)."""
    waymo: SampleLog
    image_size: tuple[int, int]
    files: dict[str, int] = field(default_factory=dict)
    """Relative path -> bytes of every file under root (empty when nothing was written)."""
    more_nuscenes: tuple[SampleLog, ...] = ()
    """The drive's further scenes (``nuscenes-0002/``, ...)."""

    @property
    def logs(self) -> tuple[SampleLog, ...]:
        """Every log, in ``discover_logs`` order (kind, path, name)."""
        return (self.nuscenes, *self.more_nuscenes, self.waymo)


@dataclass(frozen=True)
class _World:
    """The demo city with linear motion: state at any timestamp."""

    center0_N3: np.ndarray
    velocity_N3: np.ndarray
    size_N3: np.ndarray
    yaw_N: np.ndarray
    classes: tuple[str, ...]
    ego0_44: np.ndarray
    ego_velocity_3: np.ndarray
    map_elements: tuple[MapElement, ...]

    @classmethod
    def build(cls, seed: int) -> "_World":
        demo = make_demo_scene(num_agents=_NUM_AGENTS, num_frames=2, dt_s=1.0, seed=seed)
        a0, a1 = demo.frames[0].agents, demo.frames[1].agents
        p0, p1 = demo.frames[0].ego_to_world, demo.frames[1].ego_to_world
        return cls(
            center0_N3=a0.center,
            velocity_N3=a1.center - a0.center,  # dt = 1 s
            size_N3=a0.size,
            yaw_N=a0.yaw,
            classes=a0.classes,
            ego0_44=p0,
            ego_velocity_3=p1[:3, 3] - p0[:3, 3],
            map_elements=demo.map_elements,
        )

    def agents_at(self, t_us: int, keep: np.ndarray | None = None, classes=None, track_ids=None) -> Agents:
        dt = (t_us - _T0_US) * 1e-6
        keep = np.arange(len(self.classes)) if keep is None else keep
        return Agents(
            center=(self.center0_N3 + self.velocity_N3 * dt)[keep],
            size=self.size_N3[keep],
            yaw=self.yaw_N[keep],
            classes=tuple(self.classes[i] for i in keep) if classes is None else classes,
            track_ids=np.arange(len(keep)) if track_ids is None else track_ids,
            velocity=self.velocity_N3[keep, :2],
        )

    def ego_at(self, t_us: int) -> np.ndarray:
        pose = self.ego0_44.copy()
        pose[:3, 3] += self.ego_velocity_3 * (t_us - _T0_US) * 1e-6
        return pose


def _city_to_world(xy_P2: np.ndarray) -> np.ndarray:
    """City-frame x/y (conditions.demo lays the city out there) -> world x/y."""
    return np.asarray(xy_P2, np.float64) @ CITY_TO_WORLD[:2, :2].T + CITY_TO_WORLD[:2, 2]


def _city_point(x: float, y: float) -> np.ndarray:
    return _city_to_world(np.array([x, y]))


_CITY_YAW = float(np.arctan2(CITY_TO_WORLD[1, 0], CITY_TO_WORLD[0, 0]))


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _render_jpegs(scene: Scene, image_hw: tuple[int, int], seed: int, tag: str) -> list[list[bytes]]:
    """JPEG bytes [frame][camera] of every frame of `scene`, control image plus seeded noise."""
    config = LayoutConfig(image_size=tuple(image_hw), bev=None, max_boxes=254)
    out = []
    for t in range(len(scene.frames)):
        control_KHW3 = render_frame(scene, t, config=config).control_KHW3
        row = []
        for k, rgb in enumerate(control_KHW3):
            rng = np.random.default_rng([seed, int(hashlib.md5(tag.encode()).hexdigest()[:8], 16), t, k])
            noisy = np.clip(rgb.astype(np.float32) + rng.normal(0.0, _NOISE_STD, rgb.shape), 0, 255).astype(np.uint8)
            ok, buf = cv2.imencode(".jpg", noisy[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            assert ok
            row.append(buf.tobytes())
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# nuScenes
# ---------------------------------------------------------------------------------------------


def _nuscenes_cameras(image_hw: tuple[int, int]) -> tuple[Camera, ...]:
    """nuScenes' Boston rig (conditions.demo) with intrinsics rescaled from 900 x 1600 to image_hw."""
    cams = []
    for name in NUSCENES_CAMERA_ORDER:
        t, q, (f, cx, cy) = NUSCENES_CALIBRATION[name]
        K = scale_intrinsics(np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]]), (900, 1600), image_hw)
        cams.append(Camera(name=name, intrinsics=K, cam_to_ego=rigid_transform(quaternion_to_matrix(q), t),
                           image_size=image_hw))
    return tuple(cams)


def _ego_road_layers(expansion: MapExpansion) -> None:
    """Structural layers of the ego road for the map expansion: one road segment with four lanes
    (no paint: not drawn by readers, present as in a real expansion map)."""
    tok, layers, polygon, line = expansion.tok, expansion.layers, expansion.polygon, expansion.line
    half = 7.0
    seg = np.array([[-250, -half], [250, -half], [250, half], [-250, half]], float)
    layers["road_segment"].append({"token": tok("road_segment", 0), "polygon_token": polygon(_city_to_world(seg)),
                                   "is_intersection": False, "drivable_area_token": expansion.drivable_area_token})
    for i, y0 in enumerate((-7.0, -3.5, 0.0, 3.5)):
        lane = np.array([[-250, y0], [250, y0], [250, y0 + 3.5], [-250, y0 + 3.5]], float)
        layers["lane"].append({
            "token": tok("lane", i), "polygon_token": polygon(_city_to_world(lane)), "lane_type": "CAR",
            "from_edge_line_token": line(_city_to_world(lane[[0, 3]])),
            "to_edge_line_token": line(_city_to_world(lane[[1, 2]])),
            "left_lane_divider_segments": [], "right_lane_divider_segments": [],
        })


def _write_nuscenes(root: Path, world: _World, image_hw, seed: int, tok: Tokens, write_images: bool,
                    variant: SampleVariant, index: int = 0) -> SampleLog:
    """Scene ``index`` of the drive: the first in ``nuscenes/``, each further one in its own dataroot,
    starting where the previous one ended."""
    cameras = _nuscenes_cameras(image_hw)
    period_us = 1e6 / _NUSCENES_HZ
    u = variant.unannotated_frames  # sweeps outside the annotated span, at each end
    scene_name = f"scene-drivegen-{index + 1:04d}"
    start = index * _NUSCENES_FRAMES
    frame_t = [_T0_US + int(round(i * period_us)) for i in range(start - u, start + _NUSCENES_FRAMES + u)]
    cam_t = {cam.name: [t + k * _NUSCENES_CAMERA_STAGGER_US for t in frame_t] for k, cam in enumerate(cameras)}
    keyframes = tuple(u + k for k in range(0, _NUSCENES_FRAMES, _NUSCENES_KEY_EVERY))
    span = slice(u, u + _NUSCENES_FRAMES)
    log_name = "drivegen-sample-boston"
    N = len(world.classes)
    # Track n is world agent n (instance n); one unmapped 'animal' follows them (instance N).
    categories = [NUSCENES_CATEGORY[c] for c in world.classes] + ["animal"]
    instance_tokens = [tok("instance", n) for n in range(N + 1)]
    dataroot = root / ("nuscenes" if index == 0 else f"nuscenes-{index + 1:04d}")

    if write_images:
        # 1. The tables, map and placeholder prior, through the one nuScenes writer. Frames are
        # CAM_FRONT's times (samples carry them); the other cameras fire later (camera_poses).
        world_scene = Scene(
            cameras=cameras, map_elements=world.map_elements,
            frames=tuple(Frame(timestamp_us=t, ego_to_world=world.ego_at(t), agents=world.agents_at(t)) for t in frame_t),
            source=SceneSource(dataset="synthetic", scene_id=scene_name))

        def image_file(camera: str, i: int) -> str:
            folder = "samples" if i in keyframes else "sweeps"
            return f"{folder}/{camera}/{log_name}__{camera}__{cam_t[camera][i]}.jpg"

        tables = write_scene_dataroot(
            dataroot, world_scene, version=NUSCENES_VERSION, scene_name=scene_name,
            location=NUSCENES_LOCATION, keyframe_every=_NUSCENES_KEY_EVERY,
            description="drivegen synthetic city, seed %d" % seed, image_file=image_file, image_hw=tuple(image_hw),
            moving_mps=0.1, tokens=tok,
            camera_poses={c: [(t, world.ego_at(t)) for t in ts] for c, ts in cam_t.items()},
            calibration={c.name: NUSCENES_CALIBRATION[c.name][:2] for c in cameras},
            categories=list(NUSCENES_CATEGORY_TO_CLASS),
            extra_annotations=[StaticAnnotation(category="animal", center=(*_city_point(12.0, -8.6), 0.3),
                                                size=(0.8, 0.3, 0.6), yaw=_CITY_YAW)],
            map_layers=_ego_road_layers, num_lidar_pts=20,
            log_fields={"logfile": log_name, "vehicle": "drivegen-synthetic", "date_captured": "2018-08-01"},
            keyframes=keyframes,
        )
        if not variant.nuscenes_map:
            (dataroot / "maps" / "expansion" / f"{NUSCENES_LOCATION}.json").unlink()
        # 2. The camera JPEGs: each camera's view of the world at its own timestamps.
        for cam in cameras:
            frames = tuple(Frame(timestamp_us=t, ego_to_world=world.ego_at(t), agents=world.agents_at(t))
                           for t in cam_t[cam.name])
            cam_scene = Scene(cameras=(cam,), frames=frames, map_elements=world.map_elements,
                              source=SceneSource(dataset="synthetic", scene_id=scene_name))
            tag = f"nuscenes/{cam.name}" if index == 0 else f"nuscenes/{scene_name}/{cam.name}"
            jpegs = _render_jpegs(cam_scene, image_hw, seed, tag)
            cs_token = tok("calibrated_sensor", cam.name)
            cam_records = [r for r in tables["sample_data"] if r["calibrated_sensor_token"] == cs_token]
            for i, sd in enumerate(cam_records):
                path = dataroot / sd["filename"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpegs[i][0])

    # 3. What a reader should return: CAM_FRONT timestamps, boxes at those times.
    mapping = map_nuscenes_categories(categories)
    frames = tuple(
        Frame(timestamp_us=t, ego_to_world=world.ego_at(t), agents=world.agents_at(
            t, keep=np.arange(N), classes=tuple(mapping.classes[:N])))
        for t in cam_t["CAM_FRONT"][span]
    )
    expansion = dataroot / "maps" / "expansion" / f"{NUSCENES_LOCATION}.json"
    no_map = None if variant.nuscenes_map else (
        f"no map expansion {str(expansion)!r} for location {NUSCENES_LOCATION!r}: map channels are empty; "
        f"unpack nuScenes-map-expansion (v1.3 or later) into {str(expansion.parent)!r}")
    scene = Scene(cameras=cameras, frames=frames, map_elements=world.map_elements if variant.nuscenes_map else (),
                  source=SceneSource(dataset="nuscenes", scene_id=scene_name,
                                     unmapped_classes={"animal": len(keyframes)}))
    return SampleLog(
        ref=LogRef(kind="nuscenes", path=str(dataroot), name=scene_name, version=NUSCENES_VERSION),
        scene=scene, track_keys=tuple(instance_tokens[:N]),
        world_classes={instance_tokens[n]: world.classes[n] for n in range(N)},
        keyframes=tuple(k - u for k in keyframes), unmapped={"animal": len(keyframes)}, world_map=world.map_elements,
        dropped={"unmapped_classes": {"animal": len(keyframes)}, "labels_without_box": 0, "cameras_without_images": {},
                 "has_map": variant.nuscenes_map, "no_map": no_map, "frames_outside_span": 2 * u},
    )


# ---------------------------------------------------------------------------------------------
# Waymo
# ---------------------------------------------------------------------------------------------


def sample_waymo_cameras(image_hw: tuple[int, int]) -> tuple[Camera, ...]:
    """The sample segment's five-camera rig (HFOV 50 deg, like Waymo's front camera) at image_hw."""
    H, W = image_hw
    focal = (W / 2) / np.tan(np.radians(_WAYMO_HFOV_DEG / 2))
    return tuple(pinhole_camera(name, yaw, 0.0, pos, image_hw, focal) for name, yaw, pos in _WAYMO_RIG)


def _waymo_map_features(world: _World, map_pb2, tok: Tokens) -> list:
    """Map features in the global frame: road edges, painted lines, crosswalks, car parks as
    driveways and lane centres of the ego road. Waymo has no drivable area, walkway or stop line."""
    feats = []

    def points(msg_list, pts):
        for x, y in pts:
            msg_list.add(x=float(x), y=float(y), z=0.0)

    for el in world.map_elements:
        f = map_pb2.MapFeature(id=len(feats) + 1)
        if el.cls == "road_edge":
            f.road_edge.type = map_pb2.RoadEdge.TYPE_ROAD_EDGE_BOUNDARY
            points(f.road_edge.polyline, el.points)
        elif el.cls in ("lane_divider", "road_divider"):
            f.road_line.type = (map_pb2.RoadLine.TYPE_BROKEN_SINGLE_WHITE if el.cls == "lane_divider"
                                else map_pb2.RoadLine.TYPE_SOLID_DOUBLE_YELLOW)
            points(f.road_line.polyline, el.points)
        elif el.cls == "ped_crossing":
            points(f.crosswalk.polygon, open_ring(el.points))
        elif el.cls == "carpark_area":
            points(f.driveway.polygon, open_ring(el.points))
        else:
            continue
        feats.append(f)
    for y in (-5.25, -1.75, 1.75, 5.25):
        f = map_pb2.MapFeature(id=len(feats) + 1)
        f.lane.type = map_pb2.LaneCenter.TYPE_SURFACE_STREET
        points(f.lane.polyline, _city_to_world(np.array([[-250.0, y], [250.0, y]])))
        feats.append(f)
    return feats


def _write_waymo(root: Path, world: _World, image_hw, seed: int, tok: Tokens, write_images: bool,
                 variant: SampleVariant) -> SampleLog:
    from waymo_open_dataset import dataset_pb2, label_pb2
    from waymo_open_dataset.protos import map_pb2

    H, W = image_hw
    cameras = sample_waymo_cameras(image_hw)
    u = variant.unannotated_frames  # records without laser labels, at each end
    times = [_T0_US + int(round(i * 1e6 / _WAYMO_HZ)) for i in range(-u, _WAYMO_FRAMES + u)]
    annotated = range(u, u + _WAYMO_FRAMES)
    labelled = np.array([n for n, c in enumerate(world.classes) if c in _WAYMO_TYPE])
    label_ids = [tok("waymo-label", n)[:22] for n in labelled]
    sign_id, sign_xy = tok("waymo-label", "sign")[:22], _city_point(18.0, -9.6)

    context = dataset_pb2.Context(name=WAYMO_SEGMENT_NAME)
    for cam in cameras:
        K = cam.intrinsics
        cal = context.camera_calibrations.add(name=dataset_pb2.CameraName.Name.Value(cam.name), width=W, height=H)
        cal.intrinsic.extend([K[0, 0], K[1, 1], K[0, 2], K[1, 2], 0.0, 0.0, 0.0, 0.0, 0.0])
        E = cam.cam_to_ego.copy()  # Waymo extrinsic (camera -> vehicle) = cam_to_ego @ A^T
        E[:3, :3] = cam.cam_to_ego[:3, :3] @ WAYMO_CAM_FROM_CONDITIONS.T
        cal.extrinsic.transform.extend(E.ravel().tolist())
        cal.rolling_shutter_direction = dataset_pb2.CameraCalibration.GLOBAL_SHUTTER

    scene_frames = tuple(Frame(timestamp_us=t, ego_to_world=world.ego_at(t), agents=world.agents_at(t)) for t in times)
    jpegs = None
    if write_images:
        render_scene = Scene(cameras=cameras, frames=scene_frames, map_elements=world.map_elements,
                             source=SceneSource(dataset="synthetic", scene_id=WAYMO_SEGMENT_NAME))
        jpegs = _render_jpegs(render_scene, image_hw, seed, "waymo")

    payloads = []
    for i, t in enumerate(times):
        pose = world.ego_at(t)
        world_to_ego = np.linalg.inv(pose)
        frame = dataset_pb2.Frame(context=context, timestamp_micros=t)
        frame.pose.transform.extend(pose.ravel().tolist())
        if jpegs is not None and variant.waymo_images:
            for k, cam in enumerate(cameras):
                img = frame.images.add(name=dataset_pb2.CameraName.Name.Value(cam.name), image=jpegs[i][k])
                img.pose.transform.extend(pose.ravel().tolist())
                img.pose_timestamp = t * 1e-6
        agents = world.agents_at(t)
        ego_yaw = yaw_of(pose)
        boxes = [(label_ids[j], _WAYMO_TYPE[world.classes[n]], agents.center[n], agents.size[n], agents.yaw[n],
                  world.velocity_N3[n]) for j, n in enumerate(labelled)]
        boxes.append((sign_id, label_pb2.Label.TYPE_SIGN, np.array([*sign_xy, 1.5]), np.array([0.2, 0.8, 3.0]),
                      _CITY_YAW, np.zeros(3)))
        if i not in annotated:
            boxes = []
        elif variant.waymo_camera_only_labels:  # 2D boxes with no laser label: nothing 3D to draw
            camera_labels = frame.camera_labels.add(name=dataset_pb2.CameraName.Name.Value("FRONT"))
            for j in range(variant.waymo_camera_only_labels):
                lab = camera_labels.labels.add(id=f"camera-only-{i}-{j}", type=label_pb2.Label.TYPE_PEDESTRIAN)
                lab.box.center_x, lab.box.center_y, lab.box.length, lab.box.width = 40.0 + 10 * j, 60.0, 12.0, 30.0
        for label_id, label_type, center, size, yaw, vel in boxes:
            c = world_to_ego[:3, :3] @ center + world_to_ego[:3, 3]
            v = world_to_ego[:3, :3] @ vel  # Waymo metadata speeds are in the vehicle frame
            label = frame.laser_labels.add(id=label_id, type=label_type)
            label.box.center_x, label.box.center_y, label.box.center_z = (float(x) for x in c)
            label.box.length, label.box.width, label.box.height = (float(x) for x in size)
            label.box.heading = float(np.arctan2(np.sin(yaw - ego_yaw), np.cos(yaw - ego_yaw)))
            label.metadata.speed_x, label.metadata.speed_y = float(v[0]), float(v[1])
        if i == 0 and variant.waymo_map:  # Waymo v1.4.2+: the map only on the first frame of a segment
            frame.map_features.extend(_waymo_map_features(world, map_pb2, tok))
        payloads.append(frame.SerializeToString(deterministic=True))

    path = root / "waymo" / f"segment-{WAYMO_SEGMENT_NAME}_with_camera_labels.tfrecord"
    if write_images:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            write_records(fh, payloads)

    # What a reader should return: vehicles become 'car', cyclists 'bicycle'; barriers and
    # cones have no Waymo label; the sign is reported, not drawn.
    types = [_WAYMO_TYPE[world.classes[n]] for n in labelled]
    mapped = map_waymo_label_types(types).classes
    frames = tuple(Frame(timestamp_us=t, ego_to_world=world.ego_at(t),
                         agents=world.agents_at(t, keep=labelled, classes=tuple(mapped)))
                   for t in times[annotated.start:annotated.stop])
    map_elements = tuple(el for el in world.map_elements
                         if el.cls in ("road_edge", "lane_divider", "road_divider", "ped_crossing"))
    map_elements += tuple(MapElement(cls="drivable_area", points=el.points) for el in world.map_elements
                          if el.cls == "carpark_area")
    n = len(frames)
    scene = Scene(cameras=cameras, frames=frames, map_elements=map_elements if variant.waymo_map else (),
                  source=SceneSource(dataset="waymo", scene_id=WAYMO_SEGMENT_NAME, unmapped_classes={"TYPE_SIGN": n}))
    no_map = None if variant.waymo_map else (f"segment {str(path)!r} has no map_features (Waymo v1.4.2+ segments "
                                             f"carry them on their first record)")
    return SampleLog(
        ref=LogRef(kind="waymo", path=str(path), name=path.stem),
        scene=scene, track_keys=tuple(label_ids),
        world_classes={label_ids[j]: world.classes[n] for j, n in enumerate(labelled)},
        keyframes=tuple(range(n)), unmapped={"TYPE_SIGN": n}, world_map=world.map_elements,
        dropped={"unmapped_classes": {"TYPE_SIGN": n}, "labels_without_box": n * variant.waymo_camera_only_labels,
                 "cameras_without_images": {} if variant.waymo_images else {c.name: n for c in cameras},
                 "has_map": variant.waymo_map, "no_map": no_map, "frames_outside_span": 2 * u},
    )


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _build(root: Path, image_hw, seed: int, write: bool, variant: SampleVariant,
           scenes: int) -> tuple[list[SampleLog], SampleLog]:
    world, tok = _World.build(seed), Tokens(seed)
    return ([_write_nuscenes(root, world, image_hw, seed, tok, write, variant, index=i) for i in range(scenes)],
            _write_waymo(root, world, image_hw, seed, tok, write, variant))


def generate_sample_logs(
    out: str | Path = "datasets/sample",
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    force: bool = False,
    variant: SampleVariant | None = None,
    nuscenes_scenes: int = NUSCENES_SCENES,
) -> SampleLogs:
    """Write the sample logs under `out` (unless present and not `force`); return the truth.

    Atomic: everything is written into a temporary sibling folder, which then replaces `out`.
    An existing `out` is reused only if its stamp file says it was made with the same seed, image
    size and variant (else StoreError: pass force=True). `variant` (tests) writes logs with what
    the pipeline must drop and report; the default is the bundled sample. `nuscenes_scenes`: scenes
    of the drive written (tests that need one log pass 1).
    """
    out = Path(out)
    H, W = (int(s) for s in image_size)
    if H < 16 or W < 16:
        raise DrivegenError(f"image_size = {tuple(image_size)!r} is too small to draw anything; pass H, W >= 16")
    variant = variant or SampleVariant()
    if not (isinstance(nuscenes_scenes, int) and nuscenes_scenes >= 1):
        raise DrivegenError(f"nuscenes_scenes = {nuscenes_scenes!r}; expected an int >= 1")
    stamp = {"generator": _STAMP_VERSION, "seed": int(seed), "image_size": [H, W]}
    if nuscenes_scenes != 1:  # a one-scene sample keeps the stamp it always had
        stamp["nuscenes_scenes"] = nuscenes_scenes
    if variant != SampleVariant():  # the default stamp stays as it was
        stamp["variant"] = dataclasses.asdict(variant)
    present = out.exists() and any(out.iterdir())
    if present and not force:
        # The truth is rebuilt from the arguments: it must describe the files that are there.
        try:
            found = json.loads((out / _STAMP_FILE).read_text())
        except (OSError, ValueError):
            found = None
        if found != stamp:
            raise StoreError(
                f"{str(out)!r} holds files not written by drivegen.data.sample_data with {stamp} (its "
                f"{_STAMP_FILE}: {found}); pass --force (force=True) to rewrite it, or choose another --out"
            )
        nus, way = _build(out, (H, W), seed, write=False, variant=variant, scenes=nuscenes_scenes)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            _build(tmp, (H, W), seed, write=True, variant=variant, scenes=nuscenes_scenes)
            (tmp / _STAMP_FILE).write_text(json.dumps(stamp, sort_keys=True) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Refs and truth name the final paths, not the temporary ones.
        nus, way = _build(out, (H, W), seed, write=False, variant=variant, scenes=nuscenes_scenes)
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return SampleLogs(root=out, nuscenes=nus[0], waymo=way, image_size=(H, W), files=files,
                      more_nuscenes=tuple(nus[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="datasets/sample", help="output folder (default: datasets/sample)")
    parser.add_argument("--image-size", nargs=2, type=int, default=DEFAULT_IMAGE_SIZE, metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite even if --out already holds files")
    parser.add_argument("--nuscenes-scenes", type=int, default=NUSCENES_SCENES,
                        help=f"scenes of the drive written as nuScenes dataroots (default {NUSCENES_SCENES})")
    args = parser.parse_args(argv)
    existed = Path(args.out).exists() and any(Path(args.out).iterdir())
    try:
        logs = generate_sample_logs(args.out, tuple(args.image_size), args.seed, args.force,
                                    nuscenes_scenes=args.nuscenes_scenes)
    except DrivegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "kept existing (pass --force to rewrite)" if existed and not args.force else "wrote"
    total = sum(logs.files.values())
    print(f"{verb} {logs.root}: {len(logs.files)} files, {total / 1e6:.2f} MB")
    for log in logs.logs:
        label = "nuScenes" if log.ref.kind == "nuscenes" else "Waymo"
        prefix = str(Path(log.ref.path).relative_to(logs.root)).split(os.sep)[0]
        size = sum(v for k, v in logs.files.items() if k.split(os.sep)[0] == prefix)
        print(f"  {label}: {log.ref.path} ({log.ref.name}): {len(log.scene.frames)} frames x "
              f"{len(log.scene.cameras)} cameras, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
