"""Per-camera layout raster and coloured control image.

The semantic layout raster (C, H, W) uint8 has the channels of `LAYOUT_CHANNELS`:
- 0..7   map classes (0/1), in `MAP_CLASSES` order, each drawn on its own: areas overlap (a
         crossing lies on the drivable area) and boxes do not hide the map (the lane goes on
         under the car; use the instance channel to know where a box covers it);
- 8..17  box classes (0/1), in `BOX_CLASSES` order; exclusive: a pixel belongs to the nearest
         box that covers it;
- 18     depth: 255 * (1 - z / depth_max_m) of the nearest box surface (z = camera depth in
         metres, per pixel on the face's plane), clipped to [1, 255]; 0 where no box covers the
         pixel. Near is bright, as in ControlNet depth maps. `depth_from_layout` decodes metres;
- 19     instance: the box's token slot + 1 (see `conditions.tokens`), 0 for none.

How boxes are drawn: the visible faces (back-face culled) of each box are clipped to the image
frustum in camera space (`geometry.project_boxes`), then filled far-to-near (painter's algorithm
by distance to the box centre) into one int32 "face canvas" whose bit fields say which face of
which box covers each pixel (face id, slot, face type, class). Everything else about boxes is
read off that canvas with shifts and lookups: instance, class, depth (the face's plane) and the
control colour. Drawing once and reading many times is what makes the renderer fast; the
painter's order is the usual approximation (two boxes that interpenetrate, or a long bus next to
a small car, can be ordered wrongly where they overlap).

Map geometry lies on the road surface (`Scene.ground_height_m` in the ego frame). Per camera, the
ground it sees (the frustum cut by the ground plane, within `map_range_m`) is computed once in
camera space and cached; shapely's STRtree picks the map parts that meet it, and GEOS clips them
against the near plane and the range, a rectangle in a ground frame aligned with the optical
axis. Every remaining point is in front of the near plane, so it projects with one affine map and
a division; what falls outside the image sides is clipped by OpenCV while drawing.

The control image (H, W, 3) uint8 RGB shows the same layout in colours: map classes in fixed
colours (later classes of MAP_CLASSES painted over earlier ones), boxes in their class colour
shaded by face (front brightest, rear darkest, so the heading shows), with a dark outline.
It is rendered from the raster through lookup tables, not drawn a second time.

Shape legend: C channels, H W output size, N boxes, F faces, S token slots, Q points.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import cv2
import numpy as np
import shapely

from conditions.bev import BevConfig
from conditions.errors import InvalidConfigError
from conditions.geometry import (
    SHIFT_BITS,
    BoxProjection,
    CameraView,
    clip_polygons,
    invert_rigid,
    planar_pose,
    transform_points,
)
from conditions.map_index import ClippedMap, MapIndex, draw_map
from conditions.taxonomy import BOX_CLASSES, BOX_COLOURS, MAP_CLASSES, MAP_COLOURS

__all__ = [
    "LAYOUT_CHANNELS",
    "DEPTH_CHANNEL",
    "INSTANCE_CHANNEL",
    "FACE_SHADES",
    "LayoutConfig",
    "clip_map_for_camera",
    "render_layout",
    "control_from_layout",
    "depth_from_layout",
]

LAYOUT_CHANNELS: tuple[str, ...] = MAP_CLASSES + BOX_CLASSES + ("depth", "instance")
_NUM_MAP = len(MAP_CLASSES)
_NUM_BOX = len(BOX_CLASSES)
DEPTH_CHANNEL = _NUM_MAP + _NUM_BOX
INSTANCE_CHANNEL = DEPTH_CHANNEL + 1
# Brightness per face type (geometry.FACE_NAMES order: front, rear, left, right, top, bottom).
FACE_SHADES = np.array([1.0, 0.5, 0.75, 0.75, 0.88, 0.4, 1.0, 1.0])
_OUTLINE_SHADE = 0.3
# Segment length (metres) that map geometry is cut into before a distorted projection.
_DISTORTED_MAP_SEGMENT_M = 1.0


@dataclass(kw_only=True, slots=True, frozen=True)
class LayoutConfig:
    """What `conditions.render_frame` renders, and at which size."""

    image_size: tuple[int, int] = (256, 448)
    """(height, width) of every per-camera output. Each camera's intrinsics are rescaled from its
    own image size (each axis separately, so a different aspect ratio stretches, never crops)."""
    max_boxes: int = 64
    """Token slots per camera (N). Boxes in view beyond it, the farthest, are neither tokenised
    nor drawn; FrameConditions.num_boxes_dropped_K counts them. At most 254 (uint8 instance ids)."""
    near_m: float = 0.1
    """Near clipping plane in metres: geometry closer to the camera than this is cut away."""
    depth_max_m: float = 80.0
    """Depth that maps to the darkest box pixel (1) of the depth channel."""
    map_range_m: float = 80.0
    """Map geometry is drawn up to this many metres ahead of and beside each camera."""
    line_width_px: int = 2
    """Stroke width of map line classes in the camera rasters."""
    control_outline: bool = True
    """Darken the outline of every box face in the control image (for people; off = flat faces)."""
    ray_stride: int = 8
    """The Plücker ray embedding has one ray per ray_stride x ray_stride pixels."""
    bev: BevConfig | None = field(default_factory=BevConfig)
    """Bird's-eye-view raster settings; None skips the BEV raster."""

    def __post_init__(self) -> None:
        size = self.image_size
        if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
            raise InvalidConfigError(f"LayoutConfig.image_size = {size!r}; expected (height, width) positive ints")
        if not (isinstance(self.max_boxes, (int, np.integer)) and 0 <= self.max_boxes <= 254):
            raise InvalidConfigError(
                f"LayoutConfig.max_boxes = {self.max_boxes!r}; expected an int in [0, 254] (instance ids are uint8)"
            )
        for name in ("near_m", "depth_max_m", "map_range_m"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise InvalidConfigError(f"LayoutConfig.{name} = {value!r}; expected a positive number of metres")
        if self.depth_max_m <= self.near_m:
            raise InvalidConfigError(
                f"LayoutConfig.depth_max_m = {self.depth_max_m} must exceed near_m = {self.near_m}"
            )
        if not (isinstance(self.line_width_px, (int, np.integer)) and 1 <= self.line_width_px <= 32):
            raise InvalidConfigError(f"LayoutConfig.line_width_px = {self.line_width_px!r}; expected an int in [1, 32]")
        if not (isinstance(self.ray_stride, (int, np.integer)) and self.ray_stride >= 1):
            raise InvalidConfigError(f"LayoutConfig.ray_stride = {self.ray_stride!r}; expected a positive int")
        if self.bev is not None and not isinstance(self.bev, BevConfig):
            raise InvalidConfigError(f"LayoutConfig.bev = {self.bev!r}; expected a BevConfig or None")


# ---------------------------------------------------------------------------------------------
# Lookup tables (built once at import)
# ---------------------------------------------------------------------------------------------
# Control-image colour index (uint8): 0 background, 1 + i map class i (the topmost one), and
# 16 * (c + 1) + f box class c with face f (0..5, FACE_SHADES), f = 6 the class's outline.
_OUTLINE_FACE = 6
# Face canvas (int32) bit fields: which face of which box covers each pixel. The colour index
# of a face is canvas >> _FACE_SHIFT (bit 21 stays 0), so no lookup is needed for it.
_FACE_ID_MASK = (1 << 10) - 1  # bits 0-9: face id (1-based, <= 3 faces x 254 boxes)
_SLOT_SHIFT = 10  # bits 10-17: token slot + 1 = instance id
_FACE_SHIFT = 18  # bits 18-20: face type (geometry.FACE_NAMES)
_CLASS_SHIFT = 22  # bits 22-25: class id + 1


def _build_luts() -> tuple[np.ndarray, np.ndarray]:
    """COLOUR_LUT (256, 3) RGB per colour index, and the same packed as RGBA words (int32)."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for i, name in enumerate(MAP_CLASSES):
        colours[1 + i] = MAP_COLOURS[name]
    shades = FACE_SHADES.copy()
    shades[_OUTLINE_FACE] = _OUTLINE_SHADE
    for c, name in enumerate(BOX_CLASSES):
        rgb = np.array(BOX_COLOURS[name], dtype=np.float64)
        start = 16 * (c + 1)
        colours[start : start + 8] = np.round(rgb[None] * shades[:, None])
    # Alpha 0 keeps the int32 words positive; the int32 view feeds cv2.LUT's 32-bit path.
    rgba = np.concatenate([colours, np.zeros((256, 1), np.uint8)], axis=1)
    return colours, np.ascontiguousarray(rgba).view(np.int32).ravel()


COLOUR_LUT, COLOUR_LUT32 = _build_luts()


# ---------------------------------------------------------------------------------------------
# Map
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CameraGround:
    """How one camera (fixed on the ego) sees the ground; depends on no frame, so it is cached.

    footprint_ego_Q2: the visible ground within range (ego x/y), None if the camera sees none.
    ego_to_frame_33 / frame_to_cam_33: the clipping frame: x' along the optical axis projected on
    the ground, origin under the camera. There the near plane is the line x' = rect[0], so
    clipping to the rectangle `rect` keeps exactly the ground in front of the near plane (within
    range); the side planes are left to OpenCV, which clips while drawing. rect is None when the
    camera looks straight up or down (then the footprint itself is the clipping region).
    """

    footprint_ego_Q2: np.ndarray | None
    ego_to_frame_33: np.ndarray
    frame_to_cam_33: np.ndarray
    rect: tuple[float, float, float, float] | None


@functools.lru_cache(maxsize=256)
def _camera_ground_cached(ego_to_cam_key: bytes, planes_key: bytes, ground_h: float, near_m: float, range_m: float):
    ego_to_cam_44 = np.frombuffer(ego_to_cam_key).reshape(4, 4)
    planes_54 = np.frombuffer(planes_key).reshape(5, 4)
    cam_to_ego = invert_rigid(ego_to_cam_44)
    c_3 = cam_to_ego[:3, 3]
    axis_3 = cam_to_ego[:3, 2]  # optical axis in the ego frame
    # 1. Footprint: a square of ground around the camera clipped to the frustum in camera space.
    square = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * range_m + c_3[:2]
    square_cam = transform_points(ego_to_cam_44, np.column_stack([square, np.full(4, ground_h)]))
    verts, counts = clip_polygons(square_cam[None], np.array([4]), planes_54)
    footprint = None
    if counts[0] >= 3:
        footprint = transform_points(cam_to_ego, verts[0, : counts[0]])[:, :2]
        if shapely.Polygon(footprint).area <= 0:
            footprint = None
    # 2. Clipping frame. On the ground, z_cam = u x' + axis_z (ground_h - c_z), u = |axis_xy|.
    u = float(np.hypot(axis_3[0], axis_3[1]))
    e1 = axis_3[:2] / u if u > 1e-3 else np.array([1.0, 0.0])
    e2 = np.array([-e1[1], e1[0]])
    ego_to_frame = np.eye(3)
    ego_to_frame[0, :2], ego_to_frame[1, :2] = e1, e2
    ego_to_frame[:2, 2] = -ego_to_frame[:2, :2] @ c_3[:2]
    # frame (x', y', 1) -> ego (x, y, ground_h) -> camera
    frame_to_ego = np.zeros((3, 3))
    frame_to_ego[:2, 0], frame_to_ego[:2, 1], frame_to_ego[:2, 2] = e1, e2, c_3[:2]
    frame_to_ego[2, 2] = ground_h
    frame_to_cam = ego_to_cam_44[:3, :3] @ frame_to_ego
    frame_to_cam[:, 2] += ego_to_cam_44[:3, 3]
    rect = None
    if u > 1e-3:
        x_near = (near_m - axis_3[2] * (ground_h - c_3[2])) / u
        # A hair beyond the near line so rounding cannot put a vertex behind the camera.
        rect = (x_near + 1e-6, -range_m, max(x_near + 1e-6, range_m), range_m)
    return _CameraGround(footprint, ego_to_frame, frame_to_cam, rect)


def _camera_ground(view: CameraView, ground_h: float, near_m: float, range_m: float) -> _CameraGround:
    return _camera_ground_cached(
        np.ascontiguousarray(view.ego_to_cam_44).tobytes(),
        np.ascontiguousarray(view.planes_54).tobytes(),
        float(ground_h),
        float(near_m),
        float(range_m),
    )


def clip_map_for_camera(
    map_index: MapIndex,
    view: CameraView,
    ego_to_world_44: np.ndarray,
    ground_height_m: float,
    range_m: float,
    near_m: float = 0.1,
) -> tuple[ClippedMap, np.ndarray]:
    """Map paths this camera sees, with their points in the camera frame (Q, 3).

    Every returned point lies on the ground in front of the near plane, so it projects safely.
    """
    if len(map_index) == 0:
        return ClippedMap.empty(), np.zeros((0, 3))
    ground = _camera_ground(view, ground_height_m, near_m, range_m)
    if ground.footprint_ego_Q2 is None:
        return ClippedMap.empty(), np.zeros((0, 3))
    pose_33 = planar_pose(ego_to_world_44)
    query = shapely.Polygon(ground.footprint_ego_Q2 @ pose_33[:2, :2].T + pose_33[:2, 2])
    world_to_frame = ground.ego_to_frame_33 @ _invert_2d(pose_33)
    clip_to = ground.rect
    if clip_to is None:
        clip_to = shapely.Polygon(
            ground.footprint_ego_Q2 @ ground.ego_to_frame_33[:2, :2].T + ground.ego_to_frame_33[:2, 2]
        )
    segment = None if view.distortion is None else _DISTORTED_MAP_SEGMENT_M
    clipped = map_index.clip(query, world_to_frame, clip_to, segment)
    F = ground.frame_to_cam_33
    return clipped, clipped.coords_Q2 @ F[:, :2].T + F[:, 2]


def _invert_2d(T_33: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2, :2] = T_33[:2, :2].T
    out[:2, 2] = -T_33[:2, :2].T @ T_33[:2, 2]
    return out


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def render_layout(
    view: CameraView,
    boxes: BoxProjection,
    slot_N: np.ndarray,
    class_id_N: np.ndarray,
    clipped_map: ClippedMap,
    map_pts_cam_Q3: np.ndarray,
    config: LayoutConfig,
    out_layout_CHW: np.ndarray | None = None,
    out_control_HW3: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Layout raster (C, H, W) uint8 and control image (H, W, 3) uint8 of one camera.

    out_*: zero-filled arrays to render into (e.g. slices of a stacked output), else allocated.
    """
    H, W = view.image_hw
    layout_CHW = np.zeros((len(LAYOUT_CHANNELS), H, W), np.uint8) if out_layout_CHW is None else out_layout_CHW
    control_HW3 = np.empty((H, W, 3), np.uint8) if out_control_HW3 is None else out_control_HW3

    # 1. Map: every point is on the ground in front of the near plane, so it projects. Points
    # outside the side planes land outside the image, where OpenCV clips them. The control
    # image's colour index gets the topmost map class, drawn in class order.
    index_HW = np.zeros((H, W), np.uint8)
    if len(map_pts_cam_Q3):
        px = _fixed_point(view.project(map_pts_cam_Q3))
        draw_map(layout_CHW, clipped_map, px, config.line_width_px, top_HW=index_HW)

    # 2. Boxes: painter's algorithm into the face canvas, far to near.
    drawn = slot_N[boxes.face_box_F] >= 0
    if not drawn.any():
        _colourise(index_HW, control_HW3)
        return layout_CHW, control_HW3
    face_box = boxes.face_box_F[drawn]
    num_faces = len(face_box)
    value_F = (
        np.arange(1, num_faces + 1)
        | (slot_N[face_box] + 1) << _SLOT_SHIFT
        | boxes.face_type_F[drawn] << _FACE_SHIFT
        | (class_id_N[face_box] + 1) << _CLASS_SHIFT
    )
    pts_FV2 = _fixed_point(boxes.face_uv_FV2[drawn])
    counts_F = boxes.face_count_F[drawn]
    canvas_HW = np.zeros((H, W), dtype=np.int32)
    # Clipped box faces are convex in the image unless the lens bends their edges.
    convex = view.distortion is None
    for f in np.argsort(-boxes.distance_N[face_box], kind="stable").tolist():
        pts = pts_FV2[f, : counts_F[f]]
        if convex:
            cv2.fillConvexPoly(canvas_HW, pts, int(value_F[f]), cv2.LINE_8, SHIFT_BITS)
        else:
            cv2.fillPoly(canvas_HW, [pts], int(value_F[f]), cv2.LINE_8, SHIFT_BITS)

    # 3. Channels read off the canvas's bit fields.
    face_id_HW = (canvas_HW & _FACE_ID_MASK).astype(np.uint16)
    _depth_channel(layout_CHW[DEPTH_CHANNEL], face_id_HW, view, boxes, drawn, config)
    layout_CHW[INSTANCE_CHANNEL] = (canvas_HW >> _SLOT_SHIFT) & 255
    class1_HW = (canvas_HW >> _CLASS_SHIFT).astype(np.uint8)
    for c in np.unique(class_id_N[face_box]).tolist():
        np.equal(class1_HW, c + 1, out=layout_CHW[_NUM_MAP + c].view(np.bool_))

    # 4. Control image: box faces (16 (class + 1) + face) are above every map index.
    box_index_HW = (canvas_HW >> _FACE_SHIFT).astype(np.uint8)
    np.maximum(index_HW, box_index_HW, out=index_HW)
    if config.control_outline:
        # Pixels where the face changes (between faces or boxes, or box and background), on
        # the box side, take the class's outline colour: x ^= ((x & 7) ^ 6) & mask.
        edge = cv2.morphologyEx(face_id_HW, cv2.MORPH_GRADIENT, _CROSS_3x3) != 0
        edge &= box_index_HW != 0
        flip = (index_HW & 7) ^ _OUTLINE_FACE
        flip &= edge.view(np.uint8) * np.uint8(255)
        index_HW ^= flip
    _colourise(index_HW, control_HW3)
    return layout_CHW, control_HW3


def _colourise(index_HW: np.ndarray, out_HW3: np.ndarray) -> None:
    """RGB of a colour index image: one lookup of packed RGBA words, then drop alpha.

    (OpenCV's LUT into 32-bit words is ~3x faster than into 3 channels or numpy's take.)
    """
    rgba_HW4 = cv2.LUT(index_HW, COLOUR_LUT32).view(np.uint8).reshape(index_HW.shape + (4,))
    rgb_HW3 = cv2.cvtColor(rgba_HW4, cv2.COLOR_RGBA2RGB, dst=out_HW3)
    if rgb_HW3 is not out_HW3:  # OpenCV reallocated (out_HW3 not a plain contiguous array)
        out_HW3[...] = rgb_HW3


def _fixed_point(uv_Q2: np.ndarray) -> np.ndarray:
    """Pixel coordinates to OpenCV's int32 fixed point (SHIFT_BITS fractional bits), C order.

    Clamped far outside any image, which only matters for absurd configs (a huge focal length
    with a tiny near plane) and keeps the int32 from overflowing.
    """
    limit = float(1 << (30 - SHIFT_BITS))
    return np.clip(np.round(uv_Q2 * (1 << SHIFT_BITS)), -limit * 16, limit * 16).astype(np.int32, order="C")


_UV_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _depth_channel(
    depth_HW: np.ndarray,
    face_id_HW: np.ndarray,
    view: CameraView,
    boxes: BoxProjection,
    drawn_F: np.ndarray,
    config: LayoutConfig,
) -> None:
    """Per-pixel depth of the face under each pixel, from the face's plane.

    On a plane n.x = d, the camera depth along the ray of pixel (u, v) satisfies
    1 / z = (n_x (u - cx) / fx + n_y (v - cy) / fy + n_z) / d, affine in (u, v): three
    coefficients per face, looked up by face id, over the box pixels' bounding rectangle only.
    Faces seen almost edge-on get their mean depth instead (their plane is ill-conditioned and
    they cover a sliver of pixels). With lens distortion the plane is evaluated on the pinhole
    ray, an approximation.
    """
    H, W = depth_HW.shape
    uv = boxes.face_uv_FV2[drawn_F]
    c0, c1 = max(int(np.floor(uv[..., 0].min())), 0), min(int(np.ceil(uv[..., 0].max())) + 1, W)
    r0, r1 = max(int(np.floor(uv[..., 1].min())), 0), min(int(np.ceil(uv[..., 1].max())) + 1, H)
    if c0 >= c1 or r0 >= r1:
        return
    K = view.intrinsics_33
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    n, d = boxes.face_plane_F4[drawn_F, :3], boxes.face_plane_F4[drawn_F, 3]
    z_range = boxes.face_depth_F2[drawn_F]
    a_F = n[:, 0] / (fx * d)
    b_F = n[:, 1] / (fy * d)
    c_F = (n[:, 2] - n[:, 0] * cx / fx - n[:, 1] * cy / fy) / d
    # Edge-on: the face's plane passes within 2% of its distance from the camera centre.
    edge_on = np.abs(d) < 0.02 * z_range[:, 1]
    a_F[edge_on], b_F[edge_on] = 0.0, 0.0
    c_F[edge_on] = 2.0 / (z_range[edge_on, 0] + z_range[edge_on, 1])
    # Tables indexed by face id (id 0 = no face: coefficients 0, i.e. infinitely far).
    size = max(len(a_F) + 1, 256)
    tables = np.zeros((3, size), np.float32)
    tables[0, 1 : len(a_F) + 1], tables[1, 1 : len(a_F) + 1], tables[2, 1 : len(a_F) + 1] = a_F, b_F, c_F

    if (H, W) not in _UV_CACHE:
        _UV_CACHE[(H, W)] = (np.arange(W, dtype=np.float32)[None, :], np.arange(H, dtype=np.float32)[:, None])
    u_1W, v_H1 = _UV_CACHE[(H, W)]
    roi = face_id_HW[r0:r1, c0:c1]
    if size == 256:
        # Up to 255 faces (always, with max_boxes <= 85): OpenCV's 8-bit LUT is ~3x faster.
        roi8 = roi.astype(np.uint8)
        a, b, c = (cv2.LUT(roi8, t) for t in tables)
    else:
        a, b, c = (np.take(t, roi) for t in tables)
    inv_z = a * u_1W[:, c0:c1]
    inv_z += b * v_H1[r0:r1]
    inv_z += c
    # 255 * (1 - z / depth_max) on [1, 255]; inv_z <= 0 (background, or a pixel OpenCV drew
    # just past a face's edge) counts as far, then the background is zeroed.
    np.maximum(inv_z, np.float32(1e-6), out=inv_z)
    np.divide(np.float32(255.0 / config.depth_max_m), inv_z, out=inv_z)
    np.subtract(np.float32(255.5), inv_z, out=inv_z)
    # (np.clip is several times slower than the two calls.)
    np.minimum(np.maximum(inv_z, np.float32(1.0), out=inv_z), np.float32(255.0), out=inv_z)
    byte_u8 = inv_z.astype(np.uint8)
    np.multiply(byte_u8, roi != 0, out=byte_u8, casting="unsafe")
    depth_HW[r0:r1, c0:c1] = byte_u8


_CROSS_3x3 = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def control_from_layout(layout_CHW: np.ndarray, outline: bool = False) -> np.ndarray:
    """Control image of a stored layout raster (faces unshaded: the raster keeps no face ids).

    `render_layout` makes the shaded version; this one is for previews of stored rasters.
    """
    H, W = layout_CHW.shape[1:]
    index_HW = np.zeros((H, W), np.uint8)
    for i in range(_NUM_MAP):
        index_HW[layout_CHW[i] > 0] = 1 + i
    for c in range(_NUM_BOX):
        index_HW[layout_CHW[_NUM_MAP + c] > 0] = 16 * (c + 1)
    if outline:
        instance = np.ascontiguousarray(layout_CHW[INSTANCE_CHANNEL])
        edge = (cv2.morphologyEx(instance, cv2.MORPH_GRADIENT, _CROSS_3x3) != 0) & (instance != 0)
        index_HW[edge] |= _OUTLINE_FACE
    control_HW3 = np.empty((H, W, 3), np.uint8)
    _colourise(index_HW, control_HW3)
    return control_HW3


def depth_from_layout(layout_CHW: np.ndarray, depth_max_m: float) -> np.ndarray:
    """Decode the depth channel to metres (float32, NaN where no box): z = (1 - byte/255) dmax."""
    byte = layout_CHW[DEPTH_CHANNEL].astype(np.float32)
    z = (1.0 - byte / 255.0) * depth_max_m
    z[byte == 0] = np.nan
    return z
