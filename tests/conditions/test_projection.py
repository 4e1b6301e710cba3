"""Projection and clipping agree with nuscenes-devkit and never smear boxes across the image."""

import numpy as np
import pytest
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import view_points
from pyquaternion import Quaternion

from conditions import INSTANCE_CHANNEL, LayoutConfig, render_frame
from conditions.demo import NUSCENES_CALIBRATION, nuscenes_rig, pinhole_camera, simple_scene
from conditions.geometry import (
    box_corners,
    clip_polygons,
    frustum_planes,
    invert_rigid,
    project_points,
    quaternion_to_matrix,
    rigid_transform,
    scale_intrinsics,
)

NATIVE = LayoutConfig(image_size=(900, 1600), bev=None)


class TestMatchesDevkit:
    """Box corners and pixel projections equal the devkit's (Box.corners, view_points) on the
    same box and calibration: corners to rounding, pixels within 0.5 px. The devkit's Box takes
    (width, length, height); ours is (length, width, height)."""

    def test_box_corners_equal_devkit_box_corners(self):
        rng = np.random.default_rng(0)
        center = rng.uniform(-50, 50, (20, 3))
        size = rng.uniform(0.3, 12, (20, 3))  # (l, w, h)
        yaw = rng.uniform(-np.pi, np.pi, 20)
        ours = box_corners(center, size, yaw)
        for i in range(20):
            l, w, h = size[i]
            box = Box(center[i], [w, l, h], Quaternion(axis=[0, 0, 1], angle=yaw[i]))
            np.testing.assert_allclose(ours[i], box.corners().T, atol=1e-9)

    def test_quaternion_matrix_equals_pyquaternion(self):
        for name, (_, q, _) in NUSCENES_CALIBRATION.items():
            np.testing.assert_allclose(quaternion_to_matrix(q), Quaternion(q).rotation_matrix, atol=1e-12)

    def test_projected_points_equal_view_points(self):
        rng = np.random.default_rng(1)
        K = np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])
        pts = np.column_stack([rng.uniform(-20, 20, 200), rng.uniform(-5, 5, 200), rng.uniform(0.5, 80, 200)])
        ours = project_points(K, pts)
        theirs = view_points(pts.T, K, normalize=True)[:2].T
        assert np.abs(ours - theirs).max() < 1e-6

    @pytest.mark.parametrize("camera_index", range(6))
    def test_box_token_corners_match_devkit_chain_within_half_pixel(self, camera_index):
        """World box -> ego pose -> calibrated sensor -> view_points, as the devkit tutorial does."""
        cam = nuscenes_rig()[camera_index]
        t, q, _ = NUSCENES_CALIBRATION[cam.name]
        pose_q = Quaternion(axis=[0, 0, 1], angle=0.7) * Quaternion(axis=[1, 0, 0], angle=0.02)
        pose_t = np.array([411.3, 1180.9, 0.4])
        ego_to_world = rigid_transform(pose_q.rotation_matrix, pose_t)
        # Boxes around the camera's optical axis, 8-30 m away, in the world frame.
        cam_to_world = ego_to_world @ cam.cam_to_ego
        rng = np.random.default_rng(camera_index)
        depth = rng.uniform(8, 30, 6)
        lateral = rng.uniform(-4, 4, 6)
        centers_cam = np.column_stack([lateral, rng.uniform(-0.5, 1.0, 6), depth])
        centers = centers_cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]
        sizes = rng.uniform(0.5, 5, (6, 3))
        yaws = rng.uniform(-np.pi, np.pi, 6)
        scene = simple_scene((cam,), centers, sizes, yaws, ("car",) * 6, ego_to_world=ego_to_world)
        out = render_frame(scene, 0, config=NATIVE)
        H, W = NATIVE.image_size
        compared = np.nonzero(out.box_mask_KS[0])[0]
        assert len(compared) >= 4
        for s in compared:
            i = out.box_track_KS[0, s]
            l, w, h = sizes[i]
            box = Box(centers[i], [w, l, h], Quaternion(axis=[0, 0, 1], angle=yaws[i]))
            box.translate(-pose_t)
            box.rotate(pose_q.inverse)
            box.translate(-np.array(t))
            box.rotate(Quaternion(q).inverse)
            theirs = view_points(box.corners(), cam.intrinsics, normalize=True)[:2].T
            ours = out.box_corners_KS82[0, s] * [W, H] - 0.5
            front = out.box_corner_mask_KS8[0, s]
            assert front.all()
            assert np.abs(ours - theirs).max() < 0.5


class TestScaledIntrinsics:
    """Resizing keeps the pixel-edge convention: the image border maps to the image border."""

    def test_scaled_intrinsics_map_image_edges_to_edges(self):
        K = np.array([[1000.0, 0, 799.5], [0, 1000.0, 449.5], [0, 0, 1]])
        K2 = scale_intrinsics(K, (900, 1600), (256, 448))
        for u in (-0.5, 1599.5):
            x = (u - K[0, 2]) / K[0, 0]
            assert abs(x * K2[0, 0] + K2[0, 2] - (-0.5 if u < 0 else 447.5)) < 1e-9


class TestBoxPlacement:
    """A box straight ahead of a camera lands inside its image; one behind draws nothing."""

    def test_box_straight_ahead_lands_inside_image_centre(self):
        cam = pinhole_camera(yaw_deg=0.0)
        scene = simple_scene((cam,), [[20.0, 0.0, 1.5]], [[4.0, 2.0, 1.5]], [0.0], ("car",))
        out = render_frame(scene, 0, config=LayoutConfig(image_size=(90, 160), bev=None))
        instance = out.layout_KCHW[0, INSTANCE_CHANNEL]
        rows, cols = np.nonzero(instance)
        assert out.box_mask_KS[0, 0] and len(rows) > 0
        assert abs(cols.mean() - 79.5) < 2 and abs(rows.mean() - 44.5) < 2
        assert np.all((out.box_corners_KS82[0, 0] > 0) & (out.box_corners_KS82[0, 0] < 1))

    @pytest.mark.parametrize("yaw_deg", [0.0, 55.0, 180.0, -110.0])
    def test_box_behind_camera_draws_nothing(self, yaw_deg):
        cam = pinhole_camera(yaw_deg=yaw_deg, position=(0.0, 0.0, 1.5))
        behind = -20.0 * np.array([np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg)), 0.0]) + [0, 0, 1.5]
        scene = simple_scene((cam,), [behind], [[4.0, 2.0, 1.5]], [0.4], ("truck",))
        out = render_frame(scene, 0, config=LayoutConfig(image_size=(90, 160), bev=None))
        assert not out.box_mask_KS.any()
        assert out.layout_KCHW.sum() == 0 and out.control_KHW3.sum() == 0
        assert not out.box_corner_mask_KS8.any()

    def test_box_straddling_camera_plane_stays_on_its_side(self):
        """A 10 m truck passing on the right, from 5 m behind to 5 m ahead of the camera: only
        the part ahead is drawn, all in the right half; nothing wraps to the left."""
        cam = pinhole_camera(yaw_deg=0.0, position=(0.0, 0.0, 1.5))
        scene = simple_scene((cam,), [[0.0, -3.0, 1.5]], [[10.0, 2.0, 3.0]], [0.0], ("truck",))
        out = render_frame(scene, 0, config=LayoutConfig(image_size=(90, 160), bev=None))
        cols = np.nonzero(out.layout_KCHW[0, INSTANCE_CHANNEL])[1]
        assert len(cols) > 100
        assert cols.min() > 79.5

    def test_camera_inside_box_draws_nothing(self):
        cam = pinhole_camera(position=(0.0, 0.0, 1.5))
        scene = simple_scene((cam,), [[0.0, 0.0, 1.5]], [[6.0, 3.0, 3.0]], [0.2], ("bus",))
        out = render_frame(scene, 0, config=LayoutConfig(image_size=(90, 160), bev=None))
        assert out.layout_KCHW[0, INSTANCE_CHANNEL].sum() == 0


class TestClipping:
    """Clipped polygons lie inside every plane and keep the part that was inside."""

    def test_clipped_vertices_satisfy_every_plane(self):
        rng = np.random.default_rng(3)
        K = np.array([[300.0, 0, 200], [0, 300.0, 100], [0, 0, 1]])
        planes = frustum_planes(K, (200, 400), 0.1)
        verts = rng.normal(0, 4, (500, 4, 3))
        counts = rng.integers(3, 5, 500)
        out, out_counts = clip_polygons(verts, counts, planes)
        valid = np.arange(out.shape[1])[None, :] < out_counts[:, None]
        d = out @ planes[:, :3].T + planes[:, 3]
        assert d[valid].min() > -1e-9
        assert np.all((out_counts == 0) | (out_counts >= 3))

    def test_polygon_inside_frustum_is_unchanged(self):
        K = np.array([[300.0, 0, 200], [0, 300.0, 100], [0, 0, 1]])
        planes = frustum_planes(K, (200, 400), 0.1)
        quad = np.array([[[-1, -1, 10], [1, -1, 10], [1, 1, 10], [-1, 1, 10]]], dtype=float)
        out, counts = clip_polygons(quad, np.array([4]), planes)
        assert counts[0] == 4
        np.testing.assert_array_equal(out[0, :4], quad[0])

    def test_square_cut_by_near_plane_keeps_front_half(self):
        planes = np.array([[0.0, 0.0, 1.0, -1.0]])  # z >= 1
        quad = np.array([[[0, 0, -1], [0, 1, -1], [0, 1, 3], [0, 0, 3]]], dtype=float)
        out, counts = clip_polygons(quad, np.array([4]), planes)
        assert counts[0] == 4
        assert out[0, :4, 2].min() == pytest.approx(1.0)
        assert out[0, :4, 2].max() == pytest.approx(3.0)


def test_rigid_inverse_times_transform_is_identity():
    T = rigid_transform(quaternion_to_matrix([0.3, 0.1, -0.5, 0.8]), [1.0, -2.0, 3.0])
    np.testing.assert_allclose(invert_rigid(T) @ T, np.eye(4), atol=1e-12)
