"""Box tokens carry ego-frame 3D parameters, class and track ids, nearest box first; camera
embeddings give the output-size intrinsics, the extrinsics and Plücker rays in the ego frame."""

import numpy as np
import pytest

from conditions import Agents, BOX_PARAM_NAMES, Frame, LayoutConfig, Scene, SceneSource, render_frame
from conditions.demo import nuscenes_rig, pinhole_camera, simple_scene
from conditions.geometry import rigid_transform, scale_intrinsics

CONFIG = LayoutConfig(image_size=(90, 160), max_boxes=4, bev=None)
P = {name: i for i, name in enumerate(BOX_PARAM_NAMES)}


def rotation_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


class TestBoxParams:
    """Parameters are in the ego frame: centre, size, yaw relative to the ego, velocity rotated
    into the ego frame (unknown velocity is 0)."""

    def test_params_are_ego_relative_under_any_world_pose(self):
        pose = rigid_transform(rotation_z(1.1), [120.0, -40.0, 2.0])
        ego_center = np.array([15.0, -2.0, 0.8])
        world_center = pose[:3, :3] @ ego_center + pose[:3, 3]
        agents = Agents(
            center=world_center[None],
            size=[[4.5, 1.9, 1.6]],
            yaw=[1.1 + 0.4],
            classes=("car",),
            track_ids=[42],
            velocity=(rotation_z(1.1)[:2, :2] @ np.array([3.0, 1.0]))[None],
        )
        scene = Scene(
            cameras=(pinhole_camera(),),
            frames=(Frame(timestamp_us=0, ego_to_world=pose, agents=agents),),
            source=SceneSource(dataset="synthetic", scene_id="t"),
        )
        out = render_frame(scene, 0, config=CONFIG)
        params = out.box_params_KSP[0, 0]
        np.testing.assert_allclose(params[[P["x"], P["y"], P["z"]]], ego_center, atol=1e-4)
        np.testing.assert_allclose(params[[P["length"], P["width"], P["height"]]], [4.5, 1.9, 1.6], atol=1e-6)
        assert np.arctan2(params[P["sin_yaw"]], params[P["cos_yaw"]]) == pytest.approx(0.4, abs=1e-5)
        np.testing.assert_allclose(params[[P["vx"], P["vy"]]], [3.0, 1.0], atol=1e-5)
        assert out.box_track_KS[0, 0] == 42 and out.box_class_KS[0, 0] == 0

    def test_unknown_velocity_becomes_zero(self):
        agents = Agents(
            center=[[15.0, 0, 1]],
            size=[[4.5, 1.9, 1.6]],
            yaw=[0.0],
            classes=("car",),
            track_ids=[0],
            velocity=[[np.nan, np.nan]],
        )
        scene = Scene(
            cameras=(pinhole_camera(),),
            frames=(Frame(timestamp_us=0, ego_to_world=np.eye(4), agents=agents),),
            source=SceneSource(dataset="synthetic", scene_id="t"),
        )
        params = render_frame(scene, 0, config=CONFIG).box_params_KSP[0, 0]
        assert params[P["vx"]] == 0 and params[P["vy"]] == 0


class TestSlots:
    """Slots hold the boxes in view, nearest first, padded with -1 / zeros / False."""

    def test_slots_are_nearest_first_and_padded(self):
        xs = [40.0, 10.0, 25.0]
        scene = simple_scene(
            (pinhole_camera(),), [[x, 0.0, 1.0] for x in xs], [[1.0, 1.0, 1.0]] * 3, [0.0] * 3, ("barrier",) * 3
        )
        out = render_frame(scene, 0, config=CONFIG)
        np.testing.assert_array_equal(out.box_track_KS[0], [1, 2, 0, -1])
        np.testing.assert_array_equal(out.box_mask_KS[0], [True, True, True, False])
        assert np.all(np.diff(out.box_params_KSP[0, :3, P["x"]]) > 0)
        assert not out.box_corners_KS82[0, 3].any() and out.box_class_KS[0, 3] == -1

    def test_box_in_two_cameras_gets_a_slot_in_each(self):
        cams = (pinhole_camera("LEFT", yaw_deg=20), pinhole_camera("RIGHT", yaw_deg=-20))
        scene = simple_scene(cams, [[20.0, 0.0, 1.0]], [[4.0, 2.0, 1.5]], [0.0], ("car",))
        out = render_frame(scene, 0, config=CONFIG)
        assert out.box_mask_KS[:, 0].all()
        # Left camera sees it right of centre, right camera left of centre.
        assert out.box_corners_KS82[0, 0, :, 0].mean() > 0.5 > out.box_corners_KS82[1, 0, :, 0].mean()


class TestCameraEmbedding:
    """Intrinsics are rescaled to the output; Plücker rays are unit directions through pixel
    centres with moment o x d, in the ego frame."""

    def test_intrinsics_are_scaled_to_output_size(self):
        rig = nuscenes_rig()
        scene = simple_scene(rig, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), ())
        out = render_frame(scene, 0, config=CONFIG)
        for k, cam in enumerate(rig):
            np.testing.assert_allclose(
                out.intrinsics_K33[k], scale_intrinsics(cam.intrinsics, cam.image_size, (90, 160)), rtol=1e-6
            )
            np.testing.assert_allclose(out.cam_to_ego_K44[k], cam.cam_to_ego, atol=1e-6)

    def test_plucker_rays_reproject_to_their_pixels(self):
        rig = nuscenes_rig()
        scene = simple_scene(rig, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), ())
        config = LayoutConfig(image_size=(90, 160), ray_stride=10, bev=None)
        out = render_frame(scene, 0, config=config)
        assert out.plucker_K6hw.shape == (6, 6, 9, 16)
        for k, cam in enumerate(rig):
            d = out.plucker_K6hw[k, :3].reshape(3, -1).T.astype(np.float64)
            m = out.plucker_K6hw[k, 3:].reshape(3, -1).T.astype(np.float64)
            o = cam.cam_to_ego[:3, 3]
            np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
            np.testing.assert_allclose(m, np.cross(o, d), atol=1e-5)
            # A point along the ray projects back to the ray's pixel centre (4.5 + 10 j, 4.5 + 10 i).
            pts_cam = (o + 10.0 * d - cam.cam_to_ego[:3, 3]) @ cam.cam_to_ego[:3, :3]
            uv = pts_cam[:, :2] / pts_cam[:, 2:] * np.diag(out.intrinsics_K33[k])[:2] + out.intrinsics_K33[k, :2, 2]
            jj, ii = np.meshgrid(np.arange(16), np.arange(9))
            np.testing.assert_allclose(uv, np.column_stack([4.5 + 10 * jj.ravel(), 4.5 + 10 * ii.ravel()]), atol=1e-3)
