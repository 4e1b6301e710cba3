"""Bird's-eye-view raster of one frame around the ego: map classes and box footprints.

The raster is ego-centred and ego-aligned: the ego's +x (forward) points up the image (towards
row 0) and +y (left) points left (towards column 0); the ego origin sits at the raster centre.
Pixel (row i, col j) covers the ground around ego x = (H/2 - 0.5 - i) * m, y = (W/2 - 0.5 - j) * m,
with m = `BevConfig.metres_per_px`.

Channels (uint8, 0/1): the 8 map classes of `conditions.taxonomy.MAP_CLASSES`, then the 10 box
classes of `BOX_CLASSES` (box footprints, the box's bottom rectangle). See `BEV_CHANNELS`.

Shape legend: C channels, H W raster size, N boxes, Q points.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import shapely

from conditions.errors import InvalidConfigError
from conditions.geometry import SHIFT_BITS, box_corners, invert_rigid, planar_pose, transform_points
from conditions.map_index import MapIndex, draw_map
from conditions.taxonomy import BOX_CLASSES, MAP_CLASSES

__all__ = ["BEV_CHANNELS", "BevConfig", "render_bev"]

BEV_CHANNELS: tuple[str, ...] = MAP_CLASSES + BOX_CLASSES


@dataclass(kw_only=True, slots=True, frozen=True)
class BevConfig:
    """Size and resolution of the bird's-eye-view raster."""

    size_px: tuple[int, int] = (200, 200)
    """(height, width) in pixels; height runs along ego x (forward), width along ego y."""
    metres_per_px: float = 0.5
    """Ground resolution: the default covers 100 m x 100 m around the ego."""
    line_width_px: int = 1
    """Stroke width of the line classes (dividers, road edges, stop lines)."""

    def __post_init__(self) -> None:
        if len(self.size_px) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in self.size_px):
            raise InvalidConfigError(f"BevConfig.size_px = {self.size_px!r}; expected (height, width) positive ints")
        if not (np.isfinite(self.metres_per_px) and self.metres_per_px > 0):
            raise InvalidConfigError(f"BevConfig.metres_per_px = {self.metres_per_px!r}; expected a positive number")
        if not (isinstance(self.line_width_px, (int, np.integer)) and 1 <= self.line_width_px <= 32):
            raise InvalidConfigError(f"BevConfig.line_width_px = {self.line_width_px!r}; expected an int in [1, 32]")


def render_bev(
    map_index: MapIndex,
    ego_to_world_44: np.ndarray,
    center_N3: np.ndarray,
    size_N3: np.ndarray,
    yaw_N: np.ndarray,
    class_id_N: np.ndarray,
    config: BevConfig,
) -> np.ndarray:
    """BEV raster (C, H, W) uint8 of one frame; boxes and pose in the world frame."""
    H, W = config.size_px
    m = config.metres_per_px
    raster_CHW = np.zeros((len(BEV_CHANNELS), H, W), dtype=np.uint8)

    # 1. Map: query with the raster's footprint in world x/y, clip in the ego frame, where the
    # footprint is an axis-aligned rectangle.
    pose_33 = planar_pose(ego_to_world_44)
    half_x, half_y = H * m / 2, W * m / 2
    corners_ego = np.array([[half_x, half_y, 1], [half_x, -half_y, 1], [-half_x, -half_y, 1], [-half_x, half_y, 1]])
    region = shapely.Polygon((corners_ego @ pose_33.T)[:, :2])
    world_to_ego_33 = np.eye(3)
    world_to_ego_33[:2, :2] = pose_33[:2, :2].T
    world_to_ego_33[:2, 2] = -pose_33[:2, :2].T @ pose_33[:2, 2]
    clipped = map_index.clip(region, world_to_ego_33, (-half_x, -half_y, half_x, half_y))
    if len(clipped.coords_Q2):
        draw_map(raster_CHW, clipped, _ego_to_pixels(clipped.coords_Q2, H, W, m), config.line_width_px)

    # 2. Boxes: bottom rectangles in the ego frame (full pose, as for cameras).
    if len(class_id_N):
        corners_ego_N83 = transform_points(invert_rigid(ego_to_world_44), box_corners(center_N3, size_N3, yaw_N))
        bottom_N42 = corners_ego_N83[:, [2, 3, 7, 6], :2]  # (+x,-y), (+x,+y), (-x,+y), (-x,-y)
        lo, hi = bottom_N42.min(axis=1), bottom_N42.max(axis=1)
        inside = (hi[:, 0] >= -half_x) & (lo[:, 0] <= half_x) & (hi[:, 1] >= -half_y) & (lo[:, 1] <= half_y)
        px_N42 = _ego_to_pixels(bottom_N42, H, W, m)
        for i in np.nonzero(inside)[0].tolist():
            cv2.fillConvexPoly(raster_CHW[len(MAP_CLASSES) + class_id_N[i]], px_N42[i], 1, cv2.LINE_8, SHIFT_BITS)
    return raster_CHW


def _ego_to_pixels(xy: np.ndarray, H: int, W: int, m: float) -> np.ndarray:
    """Ego x/y (..., 2) to fixed-point (col, row) int32 pixels."""
    col = (W / 2 - 0.5) - xy[..., 1] / m
    row = (H / 2 - 0.5) - xy[..., 0] / m
    # Clamp far outside the raster (OpenCV clips the rest): keeps the int32 fixed point from
    # overflowing; only map points already clipped to the window and boxes meeting it get here.
    uv = np.clip(np.stack([col, row], axis=-1), -4 * max(H, W), 5 * max(H, W))
    return np.round(uv * (1 << SHIFT_BITS)).astype(np.int32, order="C")
