"""Waymo Open Dataset v1 segment (TFRecord of `dataset_pb2.Frame`) -> `conditions.Scene`.

No TensorFlow: records are framed and CRC-checked by `drivegen.data.ingest.tfrecord` and parsed with
the generated protos (`waymo-open-dataset-tf-2-12-0`, installed with --no-deps).

Conventions and conversions:
- frames: one per record (10 Hz); `Frame.ego_to_world` = `frame.pose` (vehicle -> global) with
  `frame.map_pose_offset` added to its translation, so that ego, boxes and map_features share
  the map's frame (the official tutorial adds the offset to world points to align them with the
  map). The vehicle frame is x forward, y left, z up, origin on the ground (ground_height_m = 0).
- cameras: `context.camera_calibrations`, named by `dataset_pb2.CameraName` ('FRONT', ...).
  Intrinsic (f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3) -> K and OpenCV distortion (None if all zero).
  Waymo's camera frame is x forward (optical axis), y left, z up; conditions' is x right, y down,
  z forward: cam_to_ego = extrinsic @ A with p_waymo = A p_conditions,
  A = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]].
- boxes: `laser_labels` (vehicle frame, heading about vehicle z) -> world centre and yaw;
  `metadata.speed_x/y` (vehicle frame) -> world x/y velocity, NaN without metadata. Label types
  through `conditions.taxonomy.map_waymo_label_types` (TYPE_SIGN, TYPE_UNKNOWN are counted in
  `scene.source.unmapped_classes`). Track id i is the i-th label id seen; `track_keys[i]` is it.
- map: `map_features` of the first frame that has any (v1.4.2+ puts the map there), through
  `conditions.taxonomy`: road_edge -> road_edge; road_line by its type (white -> lane_divider,
  yellow -> road_divider, unknown type -> not drawn); crosswalk -> ped_crossing; driveway ->
  drivable_area (Waymo has no drivable-area layer: driveways are the only areas it gives).
  Lane centres, stop signs and speed bumps carry no paint and are not drawn.
- images: JPEGs are read lazily, one record at a time (a real segment is ~1 GB with lidar). A
  segment without any camera image is a conditions-only log: has_images is False.
- left out, and counted in `dropped`: labels of types outside the taxonomy (per frame); camera
  labels (2D, `camera_labels`) not associated with any laser label of their frame, which have no
  3D box; records before the first or after the last record with laser labels (the annotated
  span; a segment with no laser label at all keeps every record); a segment without
  `map_features` (map channels empty); cameras without an image in a record.
- rolling shutter: Waymo cameras read out column by column (`rolling_shutter_direction`); the
  projection assumes a global shutter at the image's pose. `drivegen.data.ingest.rolling_shutter`
  measures the pixel error this causes (figures in datasets/README.md).

Shape legend: N boxes, P points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conditions import Agents, Camera, ConditionsError, Frame, MapElement, Scene, SceneSource
from conditions.taxonomy import (WAYMO_LABEL_TYPE_NAMES, WAYMO_MAP_FEATURE_TO_CLASS, WAYMO_ROAD_LINE_TYPE_TO_CLASS,
                                 map_waymo_label_types)
from drivegen.errors import LogError
from drivegen.data.ingest import Dropped
from drivegen.data.ingest.images import decode_jpeg
from drivegen.data.ingest.tfrecord import iter_records, read_record_at

__all__ = ["WAYMO_CAM_FROM_CONDITIONS", "WaymoReader"]

# p_waymo_camera = A @ p_conditions_camera (see the module docstring).
WAYMO_CAM_FROM_CONDITIONS = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _protos(log: str):
    try:
        from google.protobuf.message import DecodeError
        from waymo_open_dataset import dataset_pb2
    except ImportError as exc:
        raise LogError(log, f"the Waymo protos are not importable ({exc}); install them without TensorFlow: "
                            f"pip install --no-deps waymo-open-dataset-tf-2-12-0==1.6.7") from None
    return dataset_pb2, DecodeError


def _matrix(transform, what: str, log: str) -> np.ndarray:
    values = np.asarray(transform.transform, np.float64)
    if values.shape != (16,):
        raise LogError(log, f"{what} has {values.size} transform values; expected 16 (a row-major 4x4)")
    return values.reshape(4, 4)


class WaymoReader:
    """One Waymo segment as a LogReader (see the module docstring for the conventions)."""

    def __init__(self, ref):
        self.ref = ref
        self._log = log = ref.name
        self._path = path = Path(ref.path)
        if not path.is_file():
            raise LogError(log, f"Waymo segment {str(path)!r} does not exist; check LogRef.path")
        dataset_pb2, DecodeError = _protos(log)
        self._pb = dataset_pb2

        # 1. Parse every record (CRC-checked); keep what the scene needs and each record's offset.
        self._offsets: list[int] = []
        self._image_names: list[set[str]] = []
        calibrations, map_features, context_name = None, None, ""
        raw = []  # (timestamp, ego_to_world, labels)
        for offset, payload in iter_records(path, log):
            frame = dataset_pb2.Frame()
            try:
                frame.ParseFromString(payload)
            except DecodeError as exc:
                raise LogError(log, f"{str(path)!r}: the record at byte offset {offset} is not a Waymo Frame "
                                    f"({exc}); is this a Waymo Open Dataset v1 perception segment?") from None
            if calibrations is None and len(frame.context.camera_calibrations):
                calibrations = list(frame.context.camera_calibrations)
            context_name = context_name or frame.context.name
            if map_features is None and len(frame.map_features):
                map_features = list(frame.map_features)
            pose = _matrix(frame.pose, f"frame {len(raw)} pose", log)
            off = frame.map_pose_offset
            pose[:3, 3] += (off.x, off.y, off.z)
            laser_ids = {lab.id for lab in frame.laser_labels}
            camera_only = sum(1 for cl in frame.camera_labels for lab in cl.labels
                              if lab.association.laser_object_id not in laser_ids)
            raw.append((int(frame.timestamp_micros), pose, list(frame.laser_labels), camera_only))
            self._offsets.append(offset)
            self._image_names.append({self._camera_name(img.name) for img in frame.images})
        if not raw:
            raise LogError(log, f"{str(path)!r} holds no records; re-copy the segment")
        # The annotated span: records from the first to the last with laser labels.
        labelled = [i for i, r in enumerate(raw) if r[2]]
        lo, hi = (labelled[0], labelled[-1] + 1) if labelled else (0, len(raw))
        outside = len(raw) - (hi - lo)
        raw, self._offsets, self._image_names = raw[lo:hi], self._offsets[lo:hi], self._image_names[lo:hi]

        # 2. Cameras.
        cameras = []
        for cal in calibrations or ():
            name = self._camera_name(cal.name)
            f_u, f_v, c_u, c_v, *dist = list(cal.intrinsic) + [0.0] * max(0, 9 - len(cal.intrinsic))
            E = _matrix(cal.extrinsic, f"camera {name} extrinsic", log)
            cam_to_ego = E.copy()
            cam_to_ego[:3, :3] = E[:3, :3] @ WAYMO_CAM_FROM_CONDITIONS
            dist = np.asarray(dist[:5], np.float64)
            try:
                cameras.append(Camera(name=name, intrinsics=[[f_u, 0, c_u], [0, f_v, c_v], [0, 0, 1]],
                                      cam_to_ego=cam_to_ego, image_size=(int(cal.height), int(cal.width)),
                                      distortion=dist if np.any(dist) else None))
            except ConditionsError as exc:
                raise LogError(log, f"camera {name} calibration is invalid: {exc}") from None

        # 3. Boxes, with one taxonomy pass over every label of the segment.
        all_labels = [lab for _, _, labels, _ in raw for lab in labels]
        mapping = map_waymo_label_types([lab.type for lab in all_labels])
        keys: dict[str, int] = {}
        frames, i = [], 0
        unmapped_per_frame: list[dict[str, int]] = []
        for t, pose, labels, _ in raw:
            rows = []
            unmapped_here: dict[str, int] = {}
            unmapped_per_frame.append(unmapped_here)
            for lab in labels:
                cls = mapping.classes[i]
                i += 1
                if cls is None:
                    name = WAYMO_LABEL_TYPE_NAMES.get(lab.type, str(lab.type))
                    unmapped_here[name] = unmapped_here.get(name, 0) + 1
                    continue
                track = keys.setdefault(lab.id, len(keys))
                b = lab.box
                R = pose[:3, :3]
                centre = R @ np.array([b.center_x, b.center_y, b.center_z]) + pose[:3, 3]
                # World yaw of the heading vector (the pose may carry roll and pitch).
                heading = R @ np.array([np.cos(b.heading), np.sin(b.heading), 0.0])
                yaw = np.arctan2(heading[1], heading[0])
                m = lab.metadata
                vel = (R @ np.array([m.speed_x, m.speed_y, m.speed_z]))[:2] if lab.HasField("metadata") \
                    else np.full(2, np.nan)
                rows.append((track, centre, (b.length, b.width, b.height), yaw, cls, vel))
            try:
                agents = Agents.empty() if not rows else Agents(
                    center=np.stack([r[1] for r in rows]), size=np.array([r[2] for r in rows]),
                    yaw=np.array([r[3] for r in rows]), classes=tuple(r[4] for r in rows),
                    track_ids=np.array([r[0] for r in rows]), velocity=np.stack([r[5] for r in rows]))
                frames.append(Frame(timestamp_us=t, ego_to_world=pose, agents=agents))
            except ConditionsError as exc:
                raise LogError(log, f"frame {len(frames)} (t={t} us) has invalid labels or pose: {exc}") from None
        self.track_keys = tuple(keys)

        # 4. Map.
        map_elements = tuple(self._map(map_features or ()))
        try:
            self.scene = Scene(cameras=tuple(cameras), frames=tuple(frames), map_elements=map_elements,
                               source=SceneSource(dataset="waymo", scene_id=context_name or ref.name,
                                                  unmapped_classes=mapping.report))
        except ConditionsError as exc:
            raise LogError(log, f"segment {str(path)!r} does not form a valid scene: {exc}") from None
        self.has_images = any(self._image_names)
        names = self.scene.camera_names
        self.dropped = Dropped(
            unmapped_classes=tuple(unmapped_per_frame), labels_without_box=tuple(r[3] for r in raw),
            cameras_without_images=tuple(tuple(c for c in names if c not in have) for have in self._image_names),
            frames_outside_span=outside,
            no_map=None if map_elements else (
                f"segment {str(path)!r} has no map_features (Waymo v1.4.2+ segments carry them on their first "
                f"record)" if not map_features else f"none of the segment's {len(map_features)} map_features is "
                f"drawn (lane centres, stop signs and speed bumps carry no paint)"),
        )

    # -- image access ---------------------------------------------------------------------------

    def image(self, camera: str, frame: int) -> np.ndarray:
        if not self.has_images:
            raise LogError(self._log, f"segment {str(self._path)!r} has no camera images (a conditions-only log); "
                                      f"use the segment with images, or only scene conditions")
        names = self.scene.camera_names
        if camera not in names:
            raise LogError(self._log, f"camera {camera!r} is not in this segment; cameras: {list(names)}")
        if not isinstance(frame, (int, np.integer)) or not 0 <= frame < len(self._offsets):
            raise LogError(self._log, f"frame {frame!r} is outside the segment's {len(self._offsets)} frames")
        if camera not in self._image_names[frame]:
            raise LogError(self._log, f"frame {frame} of {str(self._path)!r} has no {camera} image "
                                      f"(it has {sorted(self._image_names[frame])})")
        record = self._pb.Frame()
        record.ParseFromString(read_record_at(self._path, self._offsets[frame], self._log))
        data = next(img.image for img in record.images if self._camera_name(img.name) == camera)
        return decode_jpeg(data, self._log, f"{str(self._path)!r} frame {frame} camera {camera}")

    # -- helpers --------------------------------------------------------------------------------

    def _camera_name(self, value: int) -> str:
        names = self._pb.CameraName.Name
        if value not in names.values() or value == names.Value("UNKNOWN"):
            raise LogError(self._log, f"{str(self._path)!r} names a camera {value} that is not a known "
                                      f"dataset_pb2.CameraName ({dict(names.items())}); update the Waymo protos")
        return names.Name(value)

    def _map(self, features) -> list[MapElement]:
        out = []
        for feat in features:
            kind = feat.WhichOneof("feature_data")
            if kind == "road_line":
                cls = WAYMO_ROAD_LINE_TYPE_TO_CLASS.get(feat.road_line.type)
                pts = feat.road_line.polyline
            else:
                cls = WAYMO_MAP_FEATURE_TO_CLASS.get(kind)
                msg = getattr(feat, kind) if kind else None
                pts = getattr(msg, "polygon", None) or getattr(msg, "polyline", None) or ()
            if cls is None:
                continue
            xy = np.array([(p.x, p.y) for p in pts], np.float64).reshape(-1, 2)
            if len(xy) < (3 if kind in ("crosswalk", "driveway", "speed_bump") else 2):
                continue  # degenerate feature: nothing to draw
            out.append(MapElement(cls=cls, points=xy))
        return out
