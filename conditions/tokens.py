"""Box tokens and camera embeddings, per camera.

Box tokens (MagicDrive-style inputs for cross-attention) fill N = `LayoutConfig.max_boxes` slots
per camera: the boxes in the camera's view, nearest first; unused slots are zero with mask False.
Slot s of a camera is instance s + 1 in that camera's layout raster (`layout.INSTANCE_CHANNEL`).

Per slot:
- corners (8, 2): the box corners projected into the image, normalised so that the image spans
  [0, 1] x [0, 1] (u_n = (u + 0.5) / W, v_n = (v + 0.5) / H). Corners in view may lie outside
  [0, 1]; corners on or behind the near plane have no projection: 0 with corner_mask False
  (with lens distortion, neither have corners beyond the radius where the lens model is valid).
  Corner order is `geometry.box_corners` (the devkit's `Box.corners()`).
- params (10,): `BOX_PARAM_NAMES`, in the ego frame: centre x, y, z (m), length, width, height (m),
  sin and cos of the yaw relative to the ego heading, velocity x, y (m/s; 0 where unknown).
- class id (index in BOX_CLASSES, -1 padding), track id (-1 padding), mask, and visible_px: how
  many pixels of the raster show this box after occlusion (0 for a box hidden behind others).

Camera embedding: intrinsics at the output size, camera-to-ego extrinsics, and a Plücker ray map
(6, h, w) in the ego frame: unit ray direction d and moment o x d (o = camera centre), one ray
per `ray_stride` pixels (CameraCtrl's embedding).

Shape legend: N boxes in the frame, S token slots, h w ray map size, P = len(BOX_PARAM_NAMES).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from conditions.geometry import BoxProjection, CameraView, invert_rigid, undistort_normalised

__all__ = ["BOX_PARAM_NAMES", "BoxTokens", "box_params_ego", "box_tokens", "plucker_rays"]

BOX_PARAM_NAMES: tuple[str, ...] = ("x", "y", "z", "length", "width", "height", "sin_yaw", "cos_yaw", "vx", "vy")


@dataclass(frozen=True, slots=True)
class BoxTokens:
    """Tokens of one camera; see the module docstring for the meaning of each field."""

    corners_S82: np.ndarray  # float32
    corner_mask_S8: np.ndarray  # bool
    params_SP: np.ndarray  # float32
    class_S: np.ndarray  # int64, -1 padding
    track_S: np.ndarray  # int64, -1 padding
    mask_S: np.ndarray  # bool
    visible_px_S: np.ndarray  # int64


def box_params_ego(
    center_N3: np.ndarray,
    size_N3: np.ndarray,
    yaw_N: np.ndarray,
    velocity_N2: np.ndarray | None,
    ego_to_world_44: np.ndarray,
) -> np.ndarray:
    """(N, P) float64 box parameters in the ego frame (see BOX_PARAM_NAMES)."""
    N = center_N3.shape[0]
    R_we = ego_to_world_44[:3, :3]
    world_to_ego = invert_rigid(ego_to_world_44)
    center_ego = center_N3 @ world_to_ego[:3, :3].T + world_to_ego[:3, 3]
    # Heading vector rotated into the ego frame; its angle in the ego's x-y plane is the yaw.
    heading = np.stack([np.cos(yaw_N), np.sin(yaw_N), np.zeros(N)], axis=1) @ R_we
    yaw_ego = np.arctan2(heading[:, 1], heading[:, 0])
    if velocity_N2 is None:
        vel_ego = np.zeros((N, 2))
    else:
        vel = np.nan_to_num(velocity_N2, nan=0.0)  # unknown -> 0 (documented)
        vel_ego = (np.column_stack([vel, np.zeros(N)]) @ R_we)[:, :2]
    return np.column_stack([center_ego, size_N3, np.sin(yaw_ego), np.cos(yaw_ego), vel_ego])


def box_tokens(
    boxes: BoxProjection,
    slot_N: np.ndarray,
    params_NP: np.ndarray,
    class_id_N: np.ndarray,
    track_id_N: np.ndarray,
    instance_HW: np.ndarray,
    max_boxes: int,
) -> BoxTokens:
    """Tokens of one camera from its box projection and the instance channel it drew."""
    S = max_boxes
    H, W = instance_HW.shape
    corners = np.zeros((S, 8, 2), dtype=np.float32)
    corner_mask = np.zeros((S, 8), dtype=bool)
    params = np.zeros((S, len(BOX_PARAM_NAMES)), dtype=np.float32)
    class_S = np.full(S, -1, dtype=np.int64)
    track_S = np.full(S, -1, dtype=np.int64)
    mask = np.zeros(S, dtype=bool)
    box_idx = np.nonzero(slot_N >= 0)[0]
    slots = slot_N[box_idx]
    front = boxes.corners_front_N8[box_idx]
    uv = (boxes.corners_uv_N82[box_idx] + 0.5) / np.array([W, H])
    corners[slots] = np.where(front[..., None], uv, 0.0)
    corner_mask[slots] = front
    params[slots] = params_NP[box_idx]
    class_S[slots] = class_id_N[box_idx]
    track_S[slots] = track_id_N[box_idx]
    mask[slots] = True
    visible = np.bincount(instance_HW.ravel(), minlength=S + 1)[1 : S + 1]
    return BoxTokens(corners, corner_mask, params, class_S, track_S, mask, visible.astype(np.int64))


def plucker_rays(view: CameraView, stride: int) -> np.ndarray:
    """(6, h, w) float32 Plücker embedding in the ego frame, h = ceil(H / stride).

    Rays are fixed to the vehicle, so they are computed once per camera and size (cached; the
    returned array is read-only, copy it to modify it).
    """
    dist = None if view.distortion is None else view.distortion.tobytes()
    return _plucker_cached(view.intrinsics_33.tobytes(), view.ego_to_cam_44.tobytes(), dist, view.image_hw, stride)


@functools.lru_cache(maxsize=64)
def _plucker_cached(
    K_key: bytes, ego_to_cam_key: bytes, dist_key: bytes | None, image_hw: tuple[int, int], stride: int
):
    K = np.frombuffer(K_key).reshape(3, 3)
    ego_to_cam = np.frombuffer(ego_to_cam_key).reshape(4, 4)
    distortion = None if dist_key is None else np.frombuffer(dist_key)
    H, W = image_hw
    # Centre of each stride x stride cell (of its pixels inside the image, for a partial last cell).
    u = (np.arange(0, W, stride) + np.minimum(np.arange(0, W, stride) + stride, W) - 1) / 2
    v = (np.arange(0, H, stride) + np.minimum(np.arange(0, H, stride) + stride, H) - 1) / 2
    uu, vv = np.meshgrid(u, v)
    if distortion is None:
        x = (uu - K[0, 2]) / K[0, 0]
        y = (vv - K[1, 2]) / K[1, 1]
    else:
        xy_d = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1]], axis=-1)
        xy = undistort_normalised(xy_d, distortion)
        x, y = xy[..., 0], xy[..., 1]
    cam_to_ego = invert_rigid(ego_to_cam)
    d = np.stack([x, y, np.ones_like(x)], axis=-1) @ cam_to_ego[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = cam_to_ego[:3, 3]
    m = np.cross(np.broadcast_to(o, d.shape), d)
    rays = np.ascontiguousarray(np.concatenate([d, m], axis=-1).transpose(2, 0, 1), dtype=np.float32)
    rays.flags.writeable = False
    return rays
