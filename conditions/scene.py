"""The scene model: cameras, frames (ego pose, timestamp, agents), map and source.

A scene knows nothing of file formats: ingestion (nuScenes, Waymo) builds these dataclasses, and
every check happens here, in `__post_init__`, so that rendering can trust its input. Arrays are
converted to float64 / int64 on construction.

Frames and conventions (see `conditions.geometry` for the full list):
- world: the dataset's global frame, x/y on the ground, z up.
- ego: x forward, y left, z up, origin on the ground (nuScenes' ego frame; `Scene.ground_height_m`
  says where the road surface is when the dataset puts the origin elsewhere).
- camera: x right, y down, z forward. `Camera.cam_to_ego` maps camera points into the ego frame.
- boxes: centre (world), size (length, width, height) along the box's x/y/z, yaw about world z.
- map: 2D world (x, y) geometry lying on the road surface.

One ego pose per frame: the cameras of a frame are treated as synchronous (nuScenes cameras fire
within ~40 ms of each other; ingestion picks the pose nearest to the frame's timestamp).

Shape legend: N boxes, P points, T frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from conditions.errors import (
    InvalidBoxError,
    InvalidCameraError,
    InvalidMapError,
    InvalidPoseError,
    InvalidSceneError,
    UnknownClassError,
    show,
)
from conditions.map_index import MapIndex
from conditions.taxonomy import MAP_CLASSES, MAP_POLYGON_CLASSES, box_class_ids

__all__ = ["Camera", "Agents", "Frame", "MapElement", "SceneSource", "Scene"]


def _array(value: object, dtype, owner: str, name: str, error: type) -> np.ndarray:
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise error(f"{owner}.{name} = {show(value)} is not numeric ({exc}); pass a numeric array") from None


def _check_rigid(T_44: np.ndarray, owner: str, name: str, error: type) -> None:
    if T_44.shape != (4, 4):
        raise error(f"{owner}.{name} has shape {T_44.shape}; expected a (4, 4) homogeneous transform")
    if not np.all(np.isfinite(T_44)):
        raise error(f"{owner}.{name} = {show(T_44)} has non-finite entries; pass a finite rigid transform")
    R = T_44[:3, :3]
    if not np.allclose(T_44[3], [0, 0, 0, 1], atol=1e-6) or not np.allclose(R @ R.T, np.eye(3), atol=1e-4):
        raise error(
            f"{owner}.{name} = {show(T_44)} is not rigid (rotation not orthonormal or last row not "
            f"[0, 0, 0, 1]); build it with conditions.geometry.rigid_transform(rotation, translation)"
        )
    if np.linalg.det(R) < 0:
        raise error(f"{owner}.{name} = {show(T_44)} is a reflection (det < 0); use a proper rotation")


@dataclass(kw_only=True, slots=True)
class Camera:
    """A pinhole camera rigidly mounted on the ego vehicle."""

    name: str
    """Unique name, e.g. 'CAM_FRONT'."""
    intrinsics: np.ndarray
    """(3, 3) K in pixels of `image_size`: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], fx, fy > 0."""
    cam_to_ego: np.ndarray
    """(4, 4) rigid transform from the camera frame (x right, y down, z forward) to the ego frame."""
    image_size: tuple[int, int]
    """(height, width) in pixels of the images `intrinsics` refers to."""
    distortion: np.ndarray | None = None
    """OpenCV (k1, k2, p1, p2[, k3]) or None for an undistorted (rectified) image, as nuScenes."""

    def __post_init__(self) -> None:
        owner = f"Camera({self.name!r})"
        if not isinstance(self.name, str) or not self.name:
            raise InvalidCameraError(f"Camera.name = {self.name!r}; pass a non-empty string")
        K = _array(self.intrinsics, np.float64, owner, "intrinsics", InvalidCameraError)
        if K.shape != (3, 3):
            raise InvalidCameraError(f"{owner}.intrinsics has shape {K.shape} ({show(K)}); expected a (3, 3) matrix")
        if not np.all(np.isfinite(K)):
            raise InvalidCameraError(f"{owner}.intrinsics = {show(K)} has non-finite entries")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise InvalidCameraError(
                f"{owner}.intrinsics has focal lengths fx={K[0, 0]}, fy={K[1, 1]}; both must be positive "
                f"pixels (K[0, 0], K[1, 1])"
            )
        if K[0, 1] != 0 or K[1, 0] != 0 or not np.allclose(K[2], [0, 0, 1]):
            raise InvalidCameraError(
                f"{owner}.intrinsics = {show(K)} is not [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]; skew and a "
                f"scaled last row are not supported: normalise K by K[2, 2] and drop the skew"
            )
        self.intrinsics = K
        self.cam_to_ego = _array(self.cam_to_ego, np.float64, owner, "cam_to_ego", InvalidCameraError)
        _check_rigid(self.cam_to_ego, owner, "cam_to_ego", InvalidCameraError)
        size = tuple(self.image_size) if np.ndim(self.image_size) == 1 else ()
        if len(size) != 2 or not all(float(s).is_integer() and s > 0 for s in size):
            raise InvalidCameraError(
                f"{owner}.image_size = {self.image_size!r}; expected (height, width) as positive integers"
            )
        self.image_size = (int(size[0]), int(size[1]))
        if self.distortion is not None:
            d = _array(self.distortion, np.float64, owner, "distortion", InvalidCameraError).ravel()
            if d.shape[0] not in (4, 5) or not np.all(np.isfinite(d)):
                raise InvalidCameraError(
                    f"{owner}.distortion = {show(d)}; expected finite OpenCV (k1, k2, p1, p2[, k3]) or None"
                )
            self.distortion = d
            # Coefficients that fold back inside the image cannot describe the lens (and would
            # let far-away geometry land in the picture).
            from conditions.geometry import undistorted_bounds

            try:
                undistorted_bounds(K, self.image_size, d if np.any(d) else None)
            except ValueError as exc:
                raise InvalidCameraError(
                    f"{owner}.distortion = {show(d)} does not describe a lens for this image: {exc}. "
                    f"Check the coefficient order (k1, k2, p1, p2, k3) and that they belong to these intrinsics"
                ) from None


@dataclass(kw_only=True, slots=True)
class Agents:
    """The boxes of one frame, in the world frame. Every array has N rows; N = 0 is valid."""

    center: np.ndarray
    """(N, 3) box centres in world metres."""
    size: np.ndarray
    """(N, 3) (length, width, height) in metres, all positive. The devkit's Box.wlh is (w, l, h)."""
    yaw: np.ndarray
    """(N,) heading about world z in radians (0 along world +x)."""
    classes: tuple[str, ...]
    """N box class names from `conditions.taxonomy.BOX_CLASSES`."""
    track_ids: np.ndarray
    """(N,) int64 ids, unique in a frame and stable over the scene (ingestion maps instance tokens)."""
    velocity: np.ndarray | None = None
    """(N, 2) world x/y velocity in m/s, NaN where the source has none (nuScenes at track ends)."""
    class_ids: np.ndarray = field(init=False, repr=False)
    """(N,) int64 index of each class in BOX_CLASSES (derived)."""

    def __post_init__(self) -> None:
        self.center = _array(self.center, np.float64, "Agents", "center", InvalidBoxError)
        self.size = _array(self.size, np.float64, "Agents", "size", InvalidBoxError)
        self.yaw = _array(self.yaw, np.float64, "Agents", "yaw", InvalidBoxError)
        self.classes = tuple(self.classes)
        N = len(self.classes)
        if self.center.size == 0 and N == 0:
            self.center = self.center.reshape(0, 3)
        if self.size.size == 0 and N == 0:
            self.size = self.size.reshape(0, 3)
        for name, arr, shape in (("center", self.center, (N, 3)), ("size", self.size, (N, 3)), ("yaw", self.yaw, (N,))):
            if arr.shape != shape:
                raise InvalidBoxError(
                    f"Agents.{name} has shape {arr.shape}; expected {shape} for {N} boxes (len(classes))"
                )
            bad = ~np.isfinite(arr) if arr.ndim == 1 else ~np.isfinite(arr).all(axis=1)
            if bad.any():
                i = int(np.nonzero(bad)[0][0])
                raise InvalidBoxError(
                    f"Agents.{name}[{i}] = {show(arr[i])} is not finite ({int(bad.sum())} boxes affected); "
                    f"fix or drop these boxes during ingestion"
                )
        bad = ~(self.size > 0).all(axis=1)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise InvalidBoxError(
                f"Agents.size[{i}] = {show(self.size[i])} has a non-positive entry ({int(bad.sum())} boxes "
                f"affected); sizes are (length, width, height) in metres and must be > 0"
            )
        self.class_ids = box_class_ids(self.classes, field="Agents.classes")
        tracks = _array(self.track_ids, np.float64, "Agents", "track_ids", InvalidBoxError)
        if tracks.shape != (N,) or not np.all(np.isfinite(tracks)) or not np.all(tracks == np.round(tracks)):
            raise InvalidBoxError(f"Agents.track_ids = {show(tracks)}; expected {N} integers")
        self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(N)
        if len(np.unique(self.track_ids)) != N:
            values, counts = np.unique(self.track_ids, return_counts=True)
            raise InvalidBoxError(
                f"Agents.track_ids repeats {values[counts > 1][:10].tolist()}; each track appears once per "
                f"frame: merge or renumber duplicates during ingestion"
            )
        if self.velocity is not None:
            v = _array(self.velocity, np.float64, "Agents", "velocity", InvalidBoxError)
            if v.size == 0 and N == 0:
                v = v.reshape(0, 2)
            if v.shape != (N, 2):
                raise InvalidBoxError(f"Agents.velocity has shape {v.shape}; expected ({N}, 2) world x/y m/s or None")
            if np.isinf(v).any():
                i = int(np.nonzero(np.isinf(v).any(axis=1))[0][0])
                raise InvalidBoxError(
                    f"Agents.velocity[{i}] = {show(v[i])} is infinite; use NaN for an unknown velocity"
                )
            self.velocity = v

    @classmethod
    def empty(cls) -> "Agents":
        return cls(center=np.zeros((0, 3)), size=np.zeros((0, 3)), yaw=np.zeros(0), classes=(), track_ids=np.zeros(0))

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(kw_only=True, slots=True)
class Frame:
    """One time step: when, where the ego is, and the agents around it."""

    timestamp_us: int
    """Microseconds (nuScenes and Waymo both use them)."""
    ego_to_world: np.ndarray
    """(4, 4) rigid transform ego -> world."""
    agents: Agents = field(default_factory=Agents.empty)

    def __post_init__(self) -> None:
        self.ego_to_world = _array(self.ego_to_world, np.float64, "Frame", "ego_to_world", InvalidPoseError)
        _check_rigid(self.ego_to_world, f"Frame(t={self.timestamp_us})", "ego_to_world", InvalidPoseError)
        if not isinstance(self.timestamp_us, (int, np.integer)):
            raise InvalidPoseError(f"Frame.timestamp_us = {self.timestamp_us!r}; expected an integer (microseconds)")
        self.timestamp_us = int(self.timestamp_us)


@dataclass(kw_only=True, slots=True)
class MapElement:
    """A polygon (areas) or polyline (painted lines) in world x/y on the road surface."""

    cls: str
    """One of `conditions.taxonomy.MAP_CLASSES`; polygon classes are filled, line classes stroked."""
    points: np.ndarray
    """(P, 2) world x/y: a polygon's exterior ring (open or closed; >= 3 points) or a line (>= 2)."""
    holes: tuple[np.ndarray, ...] = ()
    """Interior rings of a polygon, each (P, 2); lines have none."""

    def __post_init__(self) -> None:
        if self.cls not in MAP_CLASSES:
            raise UnknownClassError(
                f"MapElement.cls = {self.cls!r} is not a map class; valid names: {list(MAP_CLASSES)}. "
                f"Map source layers with conditions.taxonomy (NUSCENES_MAP_LAYER_TO_CLASS, ...)"
            )
        is_polygon = self.cls in MAP_POLYGON_CLASSES
        owner = f"MapElement({self.cls!r})"
        self.points = _array(self.points, np.float64, owner, "points", InvalidMapError)
        rings = [("points", self.points)] + [
            (f"holes[{i}]", np.asarray(h, np.float64)) for i, h in enumerate(self.holes)
        ]
        if self.holes and not is_polygon:
            raise InvalidMapError(f"{owner}.holes given for a line class; only polygon classes have holes")
        need = 3 if is_polygon else 2
        for name, ring in rings:
            if ring.ndim != 2 or ring.shape[1] != 2 or ring.shape[0] < need:
                raise InvalidMapError(
                    f"{owner}.{name} has shape {ring.shape}; expected (P, 2) world x/y with P >= {need}"
                )
            if not np.all(np.isfinite(ring)):
                raise InvalidMapError(f"{owner}.{name} = {show(ring)} has non-finite coordinates")
        self.holes = tuple(r for name, r in rings[1:])


@dataclass(kw_only=True, slots=True)
class SceneSource:
    """Where a scene came from, and what its ingestion could not map."""

    dataset: str
    """'nuscenes', 'waymo' or 'synthetic'."""
    scene_id: str
    """The dataset's own id (nuScenes scene token / name, Waymo segment context name)."""
    unmapped_classes: dict[str, int] = field(default_factory=dict)
    """Source labels with no taxonomy class and how many boxes carried them (ClassMapping.report)."""


@dataclass(kw_only=True, slots=True, frozen=True)
class Scene:
    """Cameras, frames and a static map: everything `conditions.render_frame` needs.

    Frozen, because it carries an index derived from its map: build a new Scene to change it.
    """

    cameras: tuple[Camera, ...]
    """The rig; names unique. Rendering can select any subset by name."""
    frames: tuple[Frame, ...]
    """Time steps, strictly increasing timestamps. May be empty (nothing to render)."""
    map_elements: tuple[MapElement, ...] = ()
    """Static map in world x/y. May be empty."""
    source: SceneSource
    ground_height_m: float = 0.0
    """Height of the road surface in the ego frame (0 for nuScenes, whose ego origin is on the ground)."""
    map_index: MapIndex = field(init=False, repr=False, compare=False)
    """Clipping index over the map, built once here."""

    def __post_init__(self) -> None:
        for name in ("cameras", "frames", "map_elements"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name, items, kind in (
            ("cameras", self.cameras, Camera),
            ("frames", self.frames, Frame),
            ("map_elements", self.map_elements, MapElement),
        ):
            for i, item in enumerate(items):
                if not isinstance(item, kind):
                    raise InvalidSceneError(f"Scene.{name}[{i}] is a {type(item).__name__}; expected {kind.__name__}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise InvalidSceneError(f"Scene.cameras has duplicate names {names}; camera names must be unique")
        times = np.array([f.timestamp_us for f in self.frames], dtype=np.int64)
        if np.any(np.diff(times) <= 0):
            i = int(np.nonzero(np.diff(times) <= 0)[0][0]) + 1
            raise InvalidPoseError(
                f"Scene.frames[{i}].timestamp_us = {times[i]} is not after frames[{i - 1}] ({times[i - 1]}); "
                f"sort frames by time and drop duplicates"
            )
        if not np.isfinite(self.ground_height_m):
            raise InvalidSceneError(
                f"Scene.ground_height_m = {self.ground_height_m!r}; expected a finite height in metres"
            )
        object.__setattr__(self, "map_index", MapIndex(self.map_elements))

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)
