"""`render_frame`: one frame of a scene -> every conditioning array, per camera and per frame.

Each camera is rendered on its own (nothing is batched across cameras), so a camera's outputs
do not depend on which other cameras are requested, nor on their number.

Shape legend: K cameras, C layout channels, H W output size, S token slots (max_boxes),
P box parameters, h w ray map size, Cb Hb Wb BEV channels and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from conditions.bev import BEV_CHANNELS, render_bev
from conditions.errors import FrameIndexError, UnknownCameraError
from conditions.geometry import assign_slots, box_corners, camera_view, project_boxes
from conditions.layout import INSTANCE_CHANNEL, LAYOUT_CHANNELS, LayoutConfig, clip_map_for_camera, render_layout
from conditions.scene import Scene
from conditions.tokens import BOX_PARAM_NAMES, box_params_ego, box_tokens, plucker_rays

__all__ = ["FrameConditions", "render_frame"]


@dataclass(frozen=True, kw_only=True)
class FrameConditions:
    """All conditions of one frame; per-camera arrays are stacked on a leading camera axis K.

    Channel names: `layout_channels` (see conditions.layout), `bev_channels` (conditions.bev),
    `box_param_names` (conditions.tokens). Tokens' slot s is instance s + 1 in the layout.
    """

    camera_names: tuple[str, ...]
    timestamp_us: int
    layout_KCHW: np.ndarray
    """uint8 semantic layout raster (0/1 class channels, depth byte, instance id)."""
    control_KHW3: np.ndarray
    """uint8 RGB control image."""
    box_corners_KS82: np.ndarray
    """float32 projected corners, normalised to [0, 1] over the image (may exceed it)."""
    box_corner_mask_KS8: np.ndarray
    """bool: corner in front of the near plane (has a projection)."""
    box_params_KSP: np.ndarray
    """float32 3D box parameters in the ego frame (box_param_names)."""
    box_class_KS: np.ndarray
    """int64 index in BOX_CLASSES, -1 for padding."""
    box_track_KS: np.ndarray
    """int64 track id, -1 for padding."""
    box_mask_KS: np.ndarray
    """bool: the slot holds a box in this camera's view."""
    box_visible_px_KS: np.ndarray
    """int64 pixels showing the box in the layout after occlusion."""
    num_boxes_dropped_K: np.ndarray
    """int64 boxes in view that found no slot (more than max_boxes in view)."""
    intrinsics_K33: np.ndarray
    """float32 K at the output size (H, W)."""
    cam_to_ego_K44: np.ndarray
    """float32 camera -> ego extrinsics."""
    plucker_K6hw: np.ndarray
    """float32 Plücker rays (direction, moment) in the ego frame."""
    ego_to_world_44: np.ndarray
    """float64 ego pose of the frame."""
    bev_CHW: np.ndarray | None
    """uint8 BEV raster (map classes, box footprints), or None when config.bev is None."""
    layout_channels: tuple[str, ...] = LAYOUT_CHANNELS
    bev_channels: tuple[str, ...] = BEV_CHANNELS
    box_param_names: tuple[str, ...] = BOX_PARAM_NAMES


def render_frame(
    scene: Scene,
    frame_index: int,
    cameras: Sequence[str] | None = None,
    config: LayoutConfig | None = None,
) -> FrameConditions:
    """Render the conditions of `scene.frames[frame_index]` for `cameras` (default: all)."""
    config = LayoutConfig() if config is None else config
    # 1. Check the request.
    num_frames = len(scene.frames)
    if not isinstance(frame_index, (int, np.integer)) or not 0 <= frame_index < num_frames:
        valid = f"pass 0..{num_frames - 1}" if num_frames else "the scene has no frames to render"
        raise FrameIndexError(f"frame_index = {frame_index!r} is outside the scene's {num_frames} frames; {valid}")
    by_name = {c.name: c for c in scene.cameras}
    names = tuple(scene.camera_names if cameras is None else cameras)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UnknownCameraError(f"cameras = {list(names)} names {unknown}, not in the scene; valid: {list(by_name)}")
    frame = scene.frames[frame_index]
    agents = frame.agents
    H, W = config.image_size
    S = config.max_boxes

    # 2. Per-frame box geometry, shared by every camera.
    corners_world_N83 = box_corners(agents.center, agents.size, agents.yaw)
    params_NP = box_params_ego(agents.center, agents.size, agents.yaw, agents.velocity, frame.ego_to_world)

    # 3. Per camera: project, assign slots, draw (straight into the stacked outputs), tokenise.
    K = len(names)
    layout_KCHW = np.zeros((K, len(LAYOUT_CHANNELS), H, W), dtype=np.uint8)
    control_KHW3 = np.zeros((K, H, W, 3), dtype=np.uint8)
    views, tokens, dropped = [], [], []
    for k, name in enumerate(names):
        cam = by_name[name]
        view = camera_view(
            name,
            cam.intrinsics,
            cam.image_size,
            cam.cam_to_ego,
            cam.distortion,
            frame.ego_to_world,
            (H, W),
            config.near_m,
        )
        boxes = project_boxes(view, corners_world_N83, config.near_m)
        slot_N, num_dropped = assign_slots(boxes.in_view_N, boxes.distance_N, S)
        clipped, map_pts = clip_map_for_camera(
            scene.map_index, view, frame.ego_to_world, scene.ground_height_m, config.map_range_m, config.near_m
        )
        render_layout(view, boxes, slot_N, agents.class_ids, clipped, map_pts, config, layout_KCHW[k], control_KHW3[k])
        views.append(view)
        tokens.append(
            box_tokens(
                boxes, slot_N, params_NP, agents.class_ids, agents.track_ids, layout_KCHW[k, INSTANCE_CHANNEL], S
            )
        )
        dropped.append(num_dropped)

    # 4. Per frame: BEV.
    bev = None
    if config.bev is not None:
        bev = render_bev(
            scene.map_index, frame.ego_to_world, agents.center, agents.size, agents.yaw, agents.class_ids, config.bev
        )

    # 5. Stack the small per-camera arrays (K = 0 gives empty arrays of the declared shapes).
    def stack(items, shape, dtype):
        return np.stack(items).astype(dtype, copy=False) if items else np.zeros((0,) + shape, dtype=dtype)

    ray_hw = (-(-H // config.ray_stride), -(-W // config.ray_stride))
    return FrameConditions(
        camera_names=names,
        timestamp_us=frame.timestamp_us,
        layout_KCHW=layout_KCHW,
        control_KHW3=control_KHW3,
        box_corners_KS82=stack([t.corners_S82 for t in tokens], (S, 8, 2), np.float32),
        box_corner_mask_KS8=stack([t.corner_mask_S8 for t in tokens], (S, 8), bool),
        box_params_KSP=stack([t.params_SP for t in tokens], (S, len(BOX_PARAM_NAMES)), np.float32),
        box_class_KS=stack([t.class_S for t in tokens], (S,), np.int64),
        box_track_KS=stack([t.track_S for t in tokens], (S,), np.int64),
        box_mask_KS=stack([t.mask_S for t in tokens], (S,), bool),
        box_visible_px_KS=stack([t.visible_px_S for t in tokens], (S,), np.int64),
        num_boxes_dropped_K=np.array(dropped, dtype=np.int64),
        intrinsics_K33=stack([v.intrinsics_33 for v in views], (3, 3), np.float32),
        cam_to_ego_K44=stack([by_name[n].cam_to_ego for n in names], (4, 4), np.float32),
        plucker_K6hw=stack([plucker_rays(v, config.ray_stride) for v in views], (6,) + ray_hw, np.float32),
        ego_to_world_44=frame.ego_to_world.copy(),
        bev_CHW=bev,
    )
