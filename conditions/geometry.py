"""Rigid transforms, box corners, pinhole projection and frustum clipping.

Conventions (nuScenes'):
- world and ego frames: x forward, y left, z up; yaw is a rotation about z, counter-clockwise
  seen from above, 0 along +x.
- camera frame: x right, y down, z forward (optical axis). `cam_to_ego` maps camera points to ego.
- pixels: (u, v) = (column, row); the centre of pixel (i, j) sits at u = j, v = i, so the image
  covers [-0.5, W - 0.5] x [-0.5, H - 0.5] (OpenCV's and the devkit's `view_points` convention).
- boxes: centre, size = (length, width, height) along the box's own (x, y, z), yaw about world z.
  The devkit's `Box` stores (width, length, height) instead: convert when comparing.
- box corners follow `nuscenes.utils.data_classes.Box.corners()`: 0-3 on the front face
  (+x/2), 4-7 on the rear, in the order (+y,+z), (-y,+z), (-y,-z), (+y,-z).

Polygons are clipped in camera space, before the perspective division, against the near plane
and the four side planes of the image frustum (Sutherland-Hodgman, vectorised over polygons).
That is what keeps a box behind or straddling the camera from smearing across the image: the part
behind the near plane is cut off in 3D, where the projection is still well defined.

Shape legend: N boxes, P polygons, V vertices per polygon (padded), M clipping planes,
Q points; trailing 2 / 3 / 4 are coordinates, 33 / 44 matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conditions.errors import InvalidCameraError

__all__ = [
    "SHIFT_BITS",
    "BOX_FACES",
    "FACE_NAMES",
    "quaternion_to_matrix",
    "rigid_transform",
    "invert_rigid",
    "yaw_of",
    "planar_pose",
    "transform_points",
    "box_corners",
    "scale_intrinsics",
    "distort_normalised",
    "project_points",
    "undistort_normalised",
    "radial_fold_radius",
    "undistorted_bounds",
    "frustum_planes",
    "clip_polygons",
    "CameraView",
    "camera_view",
    "BoxProjection",
    "project_boxes",
    "assign_slots",
]

# Fixed-point bits for OpenCV drawing: vertices are rounded to 1/16 pixel, not to whole pixels.
SHIFT_BITS = 4

# Corner indices of the six faces, each a closed cycle around the face.
BOX_FACES = np.array(
    [
        [0, 1, 2, 3],  # front  (+x)
        [4, 5, 6, 7],  # rear   (-x)
        [0, 3, 7, 4],  # left   (+y)
        [1, 2, 6, 5],  # right  (-y)
        [0, 1, 5, 4],  # top    (+z)
        [3, 2, 6, 7],  # bottom (-z)
    ],
    dtype=np.int64,
)
FACE_NAMES = ("front", "rear", "left", "right", "top", "bottom")
_CORNER_SIGNS_83 = np.array(
    [[1, 1, 1], [1, -1, 1], [1, -1, -1], [1, 1, -1], [-1, 1, 1], [-1, -1, 1], [-1, -1, -1], [-1, 1, -1]],
    dtype=np.float64,
)
# Number of straight pieces each clipped edge is cut into before a distorted projection, so
# that straight 3D edges bend the way the lens bends them.
_DISTORTED_EDGE_PIECES = 8


# ---------------------------------------------------------------------------------------------
# Rigid transforms
# ---------------------------------------------------------------------------------------------


def quaternion_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a quaternion given as (w, x, y, z) (nuScenes' order)."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rigid_transform(rotation_33: np.ndarray, translation_3: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a rotation and a translation."""
    T_44 = np.eye(4)
    T_44[:3, :3] = rotation_33
    T_44[:3, 3] = translation_3
    return T_44


def invert_rigid(T_44: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (R^T, -R^T t): exact, unlike a general matrix inverse."""
    R_33 = T_44[:3, :3]
    out = np.eye(4)
    out[:3, :3] = R_33.T
    out[:3, 3] = -R_33.T @ T_44[:3, 3]
    return out


def yaw_of(T_44: np.ndarray) -> float:
    """Heading of a transform's x axis in its parent frame, about z."""
    return float(np.arctan2(T_44[1, 0], T_44[0, 0]))


def planar_pose(ego_to_world_44: np.ndarray) -> np.ndarray:
    """The ground-plane part of an ego pose: a 3x3 homogeneous 2D transform ego xy -> world xy.

    Map geometry is 2D; it is laid on the ego's ground plane through this transform (heading
    and x/y position only), so road slope and the pose's roll/pitch are not modelled for maps.
    """
    yaw = yaw_of(ego_to_world_44)
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, ego_to_world_44[0, 3]], [s, c, ego_to_world_44[1, 3]], [0.0, 0.0, 1.0]])


def transform_points(T_44: np.ndarray, pts_Q3: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points (..., 3)."""
    return pts_Q3 @ T_44[:3, :3].T + T_44[:3, 3]


def box_corners(center_N3: np.ndarray, size_N3: np.ndarray, yaw_N: np.ndarray) -> np.ndarray:
    """Corners (N, 8, 3) of yawed boxes, in the devkit's `Box.corners()` order (see module doc)."""
    half_N13 = 0.5 * size_N3[:, None, :]
    local_N83 = _CORNER_SIGNS_83[None] * half_N13
    c, s = np.cos(yaw_N)[:, None], np.sin(yaw_N)[:, None]
    x = c * local_N83[..., 0] - s * local_N83[..., 1]
    y = s * local_N83[..., 0] + c * local_N83[..., 1]
    return np.stack([x, y, local_N83[..., 2]], axis=-1) + center_N3[:, None, :]


# ---------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------


def scale_intrinsics(K_33: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics for the image resized from `from_hw` to `to_hw` (pixel-centre convention).

    A pixel edge at -0.5 must stay at -0.5, hence c' = (c + 0.5) * s - 0.5 rather than c * s.
    """
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    K = np.array(K_33, dtype=np.float64)
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def distort_normalised(xy_Q2: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """OpenCV's radial-tangential model (k1, k2, p1, p2[, k3]) on normalised image coordinates."""
    k1, k2, p1, p2 = dist[:4]
    k3 = dist[4] if len(dist) > 4 else 0.0
    x, y = xy_Q2[..., 0], xy_Q2[..., 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def project_points(K_33: np.ndarray, pts_cam_Q3: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
    """Pixel coordinates (..., 2) of camera-frame points; points must have z > 0.

    Without distortion this is `view_points(pts.T, K, normalize=True)` of the devkit.
    """
    xy = pts_cam_Q3[..., :2] / pts_cam_Q3[..., 2:3]
    if dist is not None:
        xy = distort_normalised(xy, dist)
    return xy * np.array([K_33[0, 0], K_33[1, 1]]) + np.array([K_33[0, 2], K_33[1, 2]])


def undistort_normalised(xy_d_Q2: np.ndarray, dist: np.ndarray, iterations: int = 60) -> np.ndarray:
    """Invert `distort_normalised` by Newton's method (OpenCV's fixed-point iteration diverges
    for strong distortion at wide angles), kept inside the radius where the model is monotonic
    so it cannot jump to a folded-back solution. Unconverged points come back as NaN."""
    k1, k2, p1, p2 = dist[:4]
    k3 = dist[4] if len(dist) > 4 else 0.0
    max_radius = 0.999 * radial_fold_radius(dist)
    target = np.asarray(xy_d_Q2, dtype=np.float64)
    xy = target.copy()
    for _ in range(iterations):
        if np.isfinite(max_radius):
            radius = np.maximum(np.linalg.norm(xy, axis=-1, keepdims=True), 1e-300)
            xy = np.where(radius > max_radius, xy * (max_radius / radius), xy)
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        R = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dR = k1 + r2 * (2 * k2 + 3 * k3 * r2)
        residual = target - distort_normalised(xy, dist)
        j11 = R + 2 * x * x * dR + 2 * p1 * y + 6 * p2 * x
        j12 = 2 * x * y * dR + 2 * p1 * x + 2 * p2 * y
        j22 = R + 2 * y * y * dR + 6 * p1 * y + 2 * p2 * x
        det = j11 * j22 - j12 * j12
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        xy = xy + np.stack(
            [
                (j22 * residual[..., 0] - j12 * residual[..., 1]) / det,
                (j11 * residual[..., 1] - j12 * residual[..., 0]) / det,
            ],
            -1,
        )
    error = np.abs(distort_normalised(xy, dist) - target).max(axis=-1)
    return np.where((error < 1e-9)[..., None], xy, np.nan)


def radial_fold_radius(dist: np.ndarray) -> float:
    """Undistorted radius where the radial model r (1 + k1 r^2 + k2 r^4 + k3 r^6) stops growing
    (inf if it never does). Beyond it the model folds back: far points would land in the image."""
    k1, k2 = dist[0], dist[1]
    k3 = dist[4] if len(dist) > 4 else 0.0
    # d/dr = 1 + 3 k1 s + 5 k2 s^2 + 7 k3 s^3 with s = r^2.
    coeffs = np.array([7 * k3, 5 * k2, 3 * k1, 1.0])
    coeffs[np.abs(coeffs) < 1e-12] = 0.0  # negligible terms would give roots at ~1e150 or overflow
    roots = np.roots(np.trim_zeros(coeffs, "f"))
    s = [r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0]
    return float(np.sqrt(min(s))) if s else float("inf")


def undistorted_bounds(
    K_33: np.ndarray, image_hw: tuple[int, int], dist: np.ndarray | None
) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1): normalised undistorted coordinates spanned by the image's outer pixel
    edges; with distortion, the bounding box of the undistorted border plus one pixel.

    Raises InvalidCameraError when the distortion model folds back before the image border: such
    coefficients cannot describe the lens. The border in normalised coordinates does not depend
    on the image resolution, so a camera valid at its own size is valid at any output size.
    """
    H, W = image_hw
    fx, fy, cx, cy = K_33[0, 0], K_33[1, 1], K_33[0, 2], K_33[1, 2]
    if dist is None:
        return (-0.5 - cx) / fx, (W - 0.5 - cx) / fx, (-0.5 - cy) / fy, (H - 0.5 - cy) / fy
    t = np.linspace(0.0, 1.0, 65)
    us, vs = -0.5 + t * W, -0.5 + t * H
    border = np.concatenate(
        [
            np.stack([us, np.full_like(us, -0.5)], 1),
            np.stack([us, np.full_like(us, H - 0.5)], 1),
            np.stack([np.full_like(vs, -0.5), vs], 1),
            np.stack([np.full_like(vs, W - 0.5), vs], 1),
        ]
    )
    xy = undistort_normalised((border - [cx, cy]) / [fx, fy], dist)
    fold = radial_fold_radius(dist)
    if not np.all(np.isfinite(xy)) or np.linalg.norm(xy, axis=1).max() >= fold:
        raise InvalidCameraError(
            f"distortion {dist.tolist()} folds back within the image: the radial model stops growing "
            f"at r = {fold:.3g}, before the image border"
        )
    x0, x1 = xy[:, 0].min() - 1 / fx, xy[:, 0].max() + 1 / fx
    y0, y1 = xy[:, 1].min() - 1 / fy, xy[:, 1].max() + 1 / fy
    # Keep the box's corners where the model is valid (drop the margin first, then shrink).
    corner = np.hypot(max(-x0, x1), max(-y0, y1))
    if corner >= 0.999 * fold:
        x0, x1, y0, y1 = xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()
        shrink = min(1.0, 0.999 * fold / np.hypot(max(-x0, x1), max(-y0, y1)))
        x0, x1, y0, y1 = x0 * shrink, x1 * shrink, y0 * shrink, y1 * shrink
    return x0, x1, y0, y1


def frustum_planes(
    K_33: np.ndarray, image_hw: tuple[int, int], near_m: float, dist: np.ndarray | None = None
) -> np.ndarray:
    """Inward unit planes (5, 4) of the image frustum, (a, b, c, d) with a x + b y + c z + d >= 0.

    Order: near, left, right, top, bottom. The side planes pass through the camera centre and the
    image's outer pixel edges (with distortion: `undistorted_bounds`, a slightly larger box).
    """
    x0, x1, y0, y1 = undistorted_bounds(K_33, image_hw, dist)
    planes = np.array(
        [
            [0.0, 0.0, 1.0, -near_m],
            [1.0, 0.0, -x0, 0.0],
            [-1.0, 0.0, x1, 0.0],
            [0.0, 1.0, -y0, 0.0],
            [0.0, -1.0, y1, 0.0],
        ]
    )
    # Unit normals make plane values signed distances (used for sphere culling of boxes).
    return planes / np.linalg.norm(planes[:, :3], axis=1, keepdims=True)


def clip_polygons(verts_PV3: np.ndarray, counts_P: np.ndarray, planes_M4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip planar polygons to the intersection of half-spaces (Sutherland-Hodgman).

    verts_PV3: vertices, the first counts_P[p] of row p valid. Returns (verts, counts) in the same
    layout; polygons left with fewer than 3 vertices get count 0. Works for non-convex polygons
    too (a concave polygon cut into pieces comes back as one polygon joined along the plane,
    which fills the same pixels).
    """
    P, V, _ = verts_PV3.shape
    counts_P = counts_P.astype(np.int64)
    if P == 0:
        return verts_PV3, counts_P
    valid_PV = np.arange(V)[None, :] < counts_P[:, None]
    d_PVM = verts_PV3 @ planes_M4[:, :3].T + planes_M4[:, 3]
    inside_PVM = (d_PVM >= 0) | ~valid_PV[..., None]
    # Fast paths, which are most polygons: entirely inside every plane (kept as is) or entirely
    # outside one plane (dropped).
    all_in_P = inside_PVM.all(axis=(1, 2))
    all_out_P = ((d_PVM < 0) | ~valid_PV[..., None]).all(axis=1).any(axis=1)
    todo = ~all_in_P & ~all_out_P
    counts_P = np.where(all_out_P, 0, counts_P)
    if not todo.any():
        return verts_PV3, counts_P
    sub_verts, sub_counts = verts_PV3[todo], counts_P[todo]
    for plane in planes_M4:
        sub_verts, sub_counts = _clip_one_plane(sub_verts, sub_counts, plane)
    V_out = max(V, sub_verts.shape[1])
    out = np.zeros((P, V_out, 3))
    out[:, :V] = verts_PV3
    out[todo] = 0.0
    out[todo, : sub_verts.shape[1]] = sub_verts
    counts_P = counts_P.copy()
    counts_P[todo] = sub_counts
    return out, counts_P


def _clip_one_plane(verts_PV3: np.ndarray, counts_P: np.ndarray, plane_4: np.ndarray):
    P, V, _ = verts_PV3.shape
    rows = np.arange(P)
    valid_PV = np.arange(V)[None, :] < counts_P[:, None]
    d_PV = verts_PV3 @ plane_4[:3] + plane_4[3]
    # Next vertex of each vertex (the last valid one wraps to the first).
    last = np.maximum(counts_P - 1, 0)
    # zeros, not empty: padding columns past a short row's last vertex are never assigned, and
    # uninitialised memory there (NaN/inf) raised spurious RuntimeWarnings in the masked maths below.
    v_next = np.zeros_like(verts_PV3)
    v_next[:, :-1] = verts_PV3[:, 1:]
    v_next[rows, last] = verts_PV3[:, 0]
    d_next = np.zeros_like(d_PV)
    d_next[:, :-1] = d_PV[:, 1:]
    d_next[rows, last] = d_PV[:, 0]
    inside = (d_PV >= 0) & valid_PV
    # Each edge (i -> i+1) emits vertex i if it is inside, then the crossing point if the edge
    # crosses the plane; the denominator is non-zero exactly when it crosses.
    cross_PV = ((d_PV >= 0) != (d_next >= 0)) & valid_PV
    t_PV = d_PV / np.where(cross_PV, d_PV - d_next, 1.0)
    cand = np.empty((P, V, 2, 3))
    cand[:, :, 0] = verts_PV3
    cand[:, :, 1] = verts_PV3 + t_PV[..., None] * (v_next - verts_PV3)
    keep = np.empty((P, V, 2), dtype=bool)
    keep[:, :, 0], keep[:, :, 1] = inside, cross_PV
    keep, cand = keep.reshape(P, 2 * V), cand.reshape(P, 2 * V, 3)
    # Compact the kept candidates to the front of each row, in order.
    counts = keep.sum(axis=1)
    r, c = np.nonzero(keep)
    out = np.zeros((P, max(int(counts.max()), 1), 3))
    out[r, (np.cumsum(keep, axis=1) - 1)[r, c]] = cand[r, c]
    return out, np.where(counts >= 3, counts, 0)


# ---------------------------------------------------------------------------------------------
# Cameras and boxes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CameraView:
    """One camera at the output resolution, posed for one frame.

    intrinsics_33 are scaled to image_hw; ego_to_cam_44 / world_to_cam_44 map points into the
    camera frame; planes_54 are the inward frustum planes (`frustum_planes`); valid_radius is the
    normalised radius up to which the lens model is valid (`radial_fold_radius`, inf if pinhole).
    """

    name: str
    image_hw: tuple[int, int]
    intrinsics_33: np.ndarray
    distortion: np.ndarray | None
    ego_to_cam_44: np.ndarray
    world_to_cam_44: np.ndarray
    planes_54: np.ndarray
    valid_radius: float = float("inf")

    def project(self, pts_cam_Q3: np.ndarray) -> np.ndarray:
        return project_points(self.intrinsics_33, pts_cam_Q3, self.distortion)


def camera_view(
    name: str,
    intrinsics_33: np.ndarray,
    camera_hw: tuple[int, int],
    cam_to_ego_44: np.ndarray,
    distortion: np.ndarray | None,
    ego_to_world_44: np.ndarray,
    image_hw: tuple[int, int],
    near_m: float,
) -> CameraView:
    K_33 = scale_intrinsics(intrinsics_33, camera_hw, image_hw)
    # An all-zero distortion vector is the pinhole model: skip the slow distorted path.
    dist = None if distortion is None or not np.any(distortion) else np.asarray(distortion, np.float64)
    ego_to_cam = invert_rigid(cam_to_ego_44)
    world_to_cam = ego_to_cam @ invert_rigid(ego_to_world_44)
    planes = frustum_planes(K_33, image_hw, near_m, dist)
    valid_radius = float("inf") if dist is None else radial_fold_radius(dist)
    return CameraView(name, tuple(image_hw), K_33, dist, ego_to_cam, world_to_cam, planes, valid_radius)


@dataclass(frozen=True, slots=True)
class BoxProjection:
    """Boxes of one frame seen by one camera (F visible, clipped faces; V vertices padded).

    in_view_N: some visible face survives clipping to the image frustum.
    distance_N: metres from the camera centre to the box centre (painter's order).
    corners_uv_N82 / corners_front_N8: projected corners; corners on or behind the near plane
    (or, with distortion, outside the lens model's valid radius) have none (front False, uv 0).
    face_box_F, face_type_F (index into FACE_NAMES), face_uv_FV2 / face_count_F: clipped faces in
    pixels. face_plane_F4: the face's plane in camera space (unit normal n, offset d = n.x on it).
    face_depth_F2: min and max camera depth z over the clipped face.
    """

    in_view_N: np.ndarray
    distance_N: np.ndarray
    corners_uv_N82: np.ndarray
    corners_front_N8: np.ndarray
    face_box_F: np.ndarray
    face_type_F: np.ndarray
    face_uv_FV2: np.ndarray
    face_count_F: np.ndarray
    face_plane_F4: np.ndarray
    face_depth_F2: np.ndarray


def project_boxes(view: CameraView, corners_world_N83: np.ndarray, near_m: float) -> BoxProjection:
    """Project, cull and clip the boxes of one frame for one camera."""
    N = corners_world_N83.shape[0]
    corners_N83 = transform_points(view.world_to_cam_44, corners_world_N83)
    centre_N3 = corners_N83.mean(axis=1)
    distance_N = np.linalg.norm(centre_N3, axis=1)

    # 1. Corners for the tokens: only those in front of the near plane have a projection (and,
    # with a lens model, only where the model is valid: beyond, it folds back into the image).
    front_N8 = corners_N83[..., 2] > near_m
    if view.distortion is not None:
        xy = corners_N83[..., :2] / np.where(front_N8, corners_N83[..., 2], 1.0)[..., None]
        front_N8 &= np.linalg.norm(xy, axis=-1) < view.valid_radius
    safe_N83 = np.where(front_N8[..., None], corners_N83, 1.0)
    corners_uv_N82 = np.where(front_N8[..., None], view.project(safe_N83), 0.0)

    # 2. Cull boxes whose bounding sphere is outside a frustum plane.
    radius_N = np.linalg.norm(corners_N83[:, 0] - centre_N3, axis=1)
    sd_N5 = centre_N3 @ view.planes_54[:, :3].T + view.planes_54[:, 3]
    cand_N = np.all(sd_N5 > -radius_N[:, None], axis=1)
    cand_idx = np.nonzero(cand_N)[0]

    # 3. Back-face culling: a face is visible when the camera (the origin) is on the outer side
    # of its plane. For a box, face centre minus box centre is along the outward normal.
    faces_M643 = corners_N83[cand_idx][:, BOX_FACES]
    face_centre_M63 = faces_M643.mean(axis=2)
    normal_M63 = face_centre_M63 - centre_N3[cand_idx, None, :]
    normal_M63 /= np.maximum(np.linalg.norm(normal_M63, axis=-1, keepdims=True), 1e-12)
    offset_M6 = np.sum(normal_M63 * face_centre_M63, axis=-1)
    visible_M6 = offset_M6 < -1e-9
    m_idx, face_type = np.nonzero(visible_M6)
    face_box = cand_idx[m_idx]
    face_plane = np.concatenate([normal_M63[m_idx, face_type], offset_M6[m_idx, face_type, None]], axis=1)

    # 4. Clip in camera space, before the division by z.
    verts, counts = clip_polygons(faces_M643[m_idx, face_type], np.full(len(m_idx), 4, np.int64), view.planes_54)
    keep = counts >= 3
    verts, counts = verts[keep], counts[keep]
    face_box, face_type, face_plane = face_box[keep], face_type[keep], face_plane[keep]

    valid = np.arange(verts.shape[1])[None, :] < counts[:, None]
    z_FV = verts[..., 2]
    face_depth = np.stack(
        [np.where(valid, z_FV, np.inf).min(axis=1), np.where(valid, z_FV, -np.inf).max(axis=1)], axis=1
    ).reshape(-1, 2)

    # 5. Perspective division (after densifying edges when the lens bends them).
    if view.distortion is not None and len(counts):
        verts, counts = _densify_polygons(verts, counts, _DISTORTED_EDGE_PIECES)
    V = verts.shape[1]
    valid = np.arange(V)[None, :] < counts[:, None]
    # Padding vertices repeat the first one so that they are harmless if ever drawn.
    verts = np.where(valid[..., None], verts, verts[:, :1])
    face_uv = view.project(verts) if len(counts) else np.zeros((0, V, 2))
    if view.distortion is not None and len(counts):
        # The undistorted frustum is a bounding box of the distorted image: faces in its corners
        # can miss the image. Keep those whose projected extent meets the pixel rectangle.
        H, W = view.image_hw
        lo, hi = face_uv.min(axis=1), face_uv.max(axis=1)
        meets = (hi[:, 0] >= -0.5) & (lo[:, 0] <= W - 0.5) & (hi[:, 1] >= -0.5) & (lo[:, 1] <= H - 0.5)
        face_uv, counts, face_depth = face_uv[meets], counts[meets], face_depth[meets]
        face_box, face_type, face_plane = face_box[meets], face_type[meets], face_plane[meets]

    in_view_N = np.zeros(N, dtype=bool)
    in_view_N[face_box] = True
    return BoxProjection(
        in_view_N=in_view_N,
        distance_N=distance_N,
        corners_uv_N82=corners_uv_N82,
        corners_front_N8=front_N8,
        face_box_F=face_box,
        face_type_F=face_type,
        face_uv_FV2=face_uv,
        face_count_F=counts,
        face_plane_F4=face_plane,
        face_depth_F2=face_depth,
    )


def _densify_polygons(verts_PV3: np.ndarray, counts_P: np.ndarray, pieces: int):
    """Cut every edge into `pieces` straight pieces (same layout, V * pieces vertices)."""
    P, V, _ = verts_PV3.shape
    idx_V = np.arange(V)
    nxt = np.where(idx_V[None, :] + 1 < counts_P[:, None], idx_V[None, :] + 1, 0)
    v_next = np.take_along_axis(verts_PV3, nxt[..., None], axis=1)
    t = (np.arange(pieces) / pieces)[None, None, :, None]
    dense = verts_PV3[:, :, None, :] + t * (v_next - verts_PV3)[:, :, None, :]
    return dense.reshape(P, V * pieces, 3), counts_P * pieces


def assign_slots(in_view_N: np.ndarray, distance_N: np.ndarray, max_boxes: int) -> tuple[np.ndarray, int]:
    """Token slot of each box (-1 if none): boxes in view, nearest first, at most `max_boxes`.

    Returns (slot_N, number of in-view boxes dropped because all slots were taken).
    """
    idx = np.nonzero(in_view_N)[0]
    order = idx[np.argsort(distance_N[idx], kind="stable")]
    slot_N = np.full(in_view_N.shape[0], -1, dtype=np.int64)
    kept = order[:max_boxes]
    slot_N[kept] = np.arange(len(kept))
    return slot_N, len(order) - len(kept)
