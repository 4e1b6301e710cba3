"""One clip's arrays, as the store holds them: the frames a log is cut into, images resized to the
store's size, and the conditions of every frame rendered and stacked over time.

Shared by preprocessing (which writes them to the store) and generation (which renders edited
scenes the same way, so a generated clip is conditioned exactly as a training clip).
"""

from __future__ import annotations

import numpy as np

from conditions import LayoutConfig, render_frame

__all__ = ["clip_starts", "render_clip_arrays", "resize_image"]


def clip_starts(num_frames: int, length: int, stride: int) -> list[int]:
    """First frames of the clips of a log of `num_frames` frames."""
    return list(range(0, num_frames - length + 1, stride)) if num_frames >= length else []


def resize_image(image_HW3: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    import cv2

    H, W = size_hw
    if image_HW3.shape[:2] == (H, W):
        return image_HW3
    # INTER_AREA when shrinking (no aliasing), linear when enlarging. Each axis is scaled on its
    # own, as conditions rescales the intrinsics: a different aspect ratio stretches, never crops.
    shrink = image_HW3.shape[0] >= H and image_HW3.shape[1] >= W
    return cv2.resize(image_HW3, (W, H), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def render_clip_arrays(scene, frame_indices: list[int], cameras, layout: LayoutConfig):
    """The condition arrays of a clip (store.ARRAYS names, T leading) and the first frame's
    FrameConditions (channel names): `conditions.render_frame` per frame, stacked over time.
    Shared by the store writer and by generation (edited scenes are rendered the same way)."""
    # render_frame stacks cameras on axis K.
    outs = [render_frame(scene, f, cameras=cameras, config=layout) for f in frame_indices]
    stack = lambda name: np.stack([getattr(o, name) for o in outs])  # noqa: E731
    arrays = dict(
        layout=stack("layout_KCHW"),
        control=stack("control_KHW3"),
        box_corners=stack("box_corners_KS82"),
        box_corner_mask=stack("box_corner_mask_KS8"),
        box_params=stack("box_params_KSP"),
        box_class=stack("box_class_KS"),
        box_track=stack("box_track_KS"),
        box_mask=stack("box_mask_KS"),
        box_visible_px=stack("box_visible_px_KS"),
        num_boxes_dropped=stack("num_boxes_dropped_K"),
        intrinsics=stack("intrinsics_K33"),
        cam_to_ego=stack("cam_to_ego_K44"),
        plucker=stack("plucker_K6hw"),
        ego_to_world=stack("ego_to_world_44").astype(np.float64),
        timestamp_us=np.array([o.timestamp_us for o in outs], dtype=np.int64),
        frame_index=np.array(frame_indices, dtype=np.int64),
    )
    if layout.bev is not None:
        arrays["bev"] = stack("bev_CHW")
    return arrays, outs[0]
