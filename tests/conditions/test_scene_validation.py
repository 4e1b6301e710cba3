"""Bad input raises a ConditionsError (a ValueError) naming the field, its value and the fix;
an empty scene is valid and renders empty / zero tensors."""

import numpy as np
import pytest

from conditions import (
    Agents,
    BevConfig,
    Camera,
    ConditionsError,
    Frame,
    FrameIndexError,
    InvalidBoxError,
    InvalidCameraError,
    InvalidConfigError,
    InvalidMapError,
    InvalidPoseError,
    InvalidSceneError,
    LayoutConfig,
    MapElement,
    Scene,
    SceneSource,
    UnknownCameraError,
    UnknownClassError,
    render_frame,
)
from conditions.demo import pinhole_camera, simple_scene

K = np.array([[1000.0, 0, 800], [0, 1000.0, 450], [0, 0, 1]])


def agents(**overrides):
    fields = dict(
        center=np.array([[10.0, 0, 1], [20.0, 2, 1]]),
        size=np.array([[4.0, 2, 1.5], [4.0, 2, 1.5]]),
        yaw=np.array([0.0, 0.1]),
        classes=("car", "truck"),
        track_ids=np.array([1, 2]),
    )
    fields.update(overrides)
    return Agents(**fields)


class TestErrorFamily:
    """Every error is a ConditionsError and a ValueError (catchable either way)."""

    def test_errors_are_value_errors(self):
        for cls in (InvalidBoxError, InvalidCameraError, UnknownClassError, FrameIndexError, InvalidConfigError):
            assert issubclass(cls, ConditionsError) and issubclass(cls, ValueError)
        assert issubclass(FrameIndexError, IndexError)


class TestBoxErrors:
    """Non-finite box parameters and non-positive sizes are rejected, naming field and index."""

    @pytest.mark.parametrize("field", ["center", "size", "yaw"])
    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_box_parameter_names_field_and_index(self, field, bad):
        value = {
            "center": np.array([[10.0, 0, 1], [20.0, 2, 1]]),
            "size": np.array([[4.0, 2, 1.5], [4.0, 2, 1.5]]),
            "yaw": np.array([0.0, 0.1]),
        }[field]
        value = value.copy()
        value[1] = bad
        with pytest.raises(InvalidBoxError, match=rf"Agents\.{field}\[1\].*not finite"):
            agents(**{field: value})

    @pytest.mark.parametrize("bad", [0.0, -1.0])
    def test_non_positive_size_names_field_value_and_fix(self, bad):
        size = np.array([[4.0, 2, 1.5], [4.0, bad, 1.5]])
        with pytest.raises(InvalidBoxError, match=r"Agents\.size\[1\].*non-positive.*\(length, width, height\)"):
            agents(size=size)

    def test_wrong_shape_names_expected_shape(self):
        with pytest.raises(InvalidBoxError, match=r"Agents\.center has shape \(2, 2\); expected \(2, 3\)"):
            agents(center=np.zeros((2, 2)))

    def test_duplicate_track_ids_are_rejected(self):
        with pytest.raises(InvalidBoxError, match="track_ids repeats"):
            agents(track_ids=np.array([5, 5]))

    def test_infinite_velocity_is_rejected_but_nan_means_unknown(self):
        with pytest.raises(InvalidBoxError, match=r"Agents\.velocity\[0\].*infinite"):
            agents(velocity=np.array([[np.inf, 0], [0, 0]]))
        assert np.isnan(agents(velocity=np.array([[np.nan, np.nan], [1.0, 0]])).velocity[0, 0])


class TestClassErrors:
    """Unknown class names are listed with their positions and the valid names."""

    def test_unknown_box_classes_are_all_listed(self):
        with pytest.raises(UnknownClassError) as info:
            agents(classes=("vehicle.car", "ufo"))
        message = str(info.value)
        assert "[0]='vehicle.car'" in message and "[1]='ufo'" in message
        assert "'traffic_cone'" in message and "map_nuscenes_categories" in message

    def test_unknown_map_class_is_rejected(self):
        with pytest.raises(UnknownClassError, match="MapElement.cls = 'lane'"):
            MapElement(cls="lane", points=np.zeros((3, 2)))


class TestCameraErrors:
    """Intrinsics must be 3x3 with positive focal lengths; extrinsics rigid; sizes positive."""

    def camera(self, **overrides):
        fields = dict(name="CAM", intrinsics=K, cam_to_ego=pinhole_camera().cam_to_ego, image_size=(900, 1600))
        fields.update(overrides)
        return Camera(**fields)

    def test_intrinsics_not_3x3_is_rejected(self):
        with pytest.raises(InvalidCameraError, match=r"Camera\('CAM'\)\.intrinsics has shape \(3, 4\)"):
            self.camera(intrinsics=np.zeros((3, 4)))

    @pytest.mark.parametrize("fx, fy", [(0.0, 1000.0), (1000.0, -5.0)])
    def test_non_positive_focal_length_is_rejected(self, fx, fy):
        bad = K.copy()
        bad[0, 0], bad[1, 1] = fx, fy
        with pytest.raises(InvalidCameraError, match=r"focal lengths fx=.*must be positive"):
            self.camera(intrinsics=bad)

    def test_non_finite_intrinsics_are_rejected(self):
        bad = K.copy()
        bad[0, 2] = np.nan
        with pytest.raises(InvalidCameraError, match="non-finite"):
            self.camera(intrinsics=bad)

    def test_non_rigid_extrinsics_are_rejected(self):
        T = np.eye(4)
        T[0, 0] = 2.0
        with pytest.raises(InvalidCameraError, match=r"cam_to_ego .* is not rigid"):
            self.camera(cam_to_ego=T)

    def test_bad_image_size_is_rejected(self):
        with pytest.raises(InvalidCameraError, match="image_size"):
            self.camera(image_size=(0, 1600))

    def test_bad_distortion_is_rejected(self):
        with pytest.raises(InvalidCameraError, match="distortion"):
            self.camera(distortion=np.zeros(3))

    def test_distortion_folding_back_inside_the_image_is_rejected(self):
        # k1 = -0.6: r (1 - 0.6 r^2) peaks at r = 0.75, but the image corner needs r ~ 0.9.
        with pytest.raises(InvalidCameraError, match="folds back within the image"):
            self.camera(distortion=np.array([-0.6, 0.0, 0.0, 0.0]))


class TestSceneErrors:
    """Poses must be rigid, timestamps increasing, camera names unique, map rings long enough."""

    def test_non_rigid_pose_is_rejected(self):
        with pytest.raises(InvalidPoseError, match="ego_to_world"):
            Frame(timestamp_us=0, ego_to_world=np.full((4, 4), np.nan))

    def test_timestamps_must_increase(self):
        frames = (Frame(timestamp_us=10, ego_to_world=np.eye(4)), Frame(timestamp_us=10, ego_to_world=np.eye(4)))
        with pytest.raises(InvalidPoseError, match=r"frames\[1\]\.timestamp_us = 10"):
            Scene(cameras=(), frames=frames, source=SceneSource(dataset="x", scene_id="y"))

    def test_duplicate_camera_names_are_rejected(self):
        cam = pinhole_camera("CAM_FRONT")
        with pytest.raises(InvalidSceneError, match="duplicate"):
            Scene(cameras=(cam, cam), frames=(), source=SceneSource(dataset="x", scene_id="y"))

    def test_map_polygon_needs_three_points(self):
        with pytest.raises(InvalidMapError, match=r"points has shape \(2, 2\).*P >= 3"):
            MapElement(cls="walkway", points=np.zeros((2, 2)))

    def test_frame_index_out_of_range_names_the_valid_range(self):
        scene = simple_scene((pinhole_camera(),), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), ())
        with pytest.raises(FrameIndexError, match=r"frame_index = 3 .* pass 0\.\.0"):
            render_frame(scene, 3)

    def test_unknown_camera_name_is_rejected(self):
        scene = simple_scene((pinhole_camera("CAM_FRONT"),), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), ())
        with pytest.raises(UnknownCameraError, match="CAM_BACK"):
            render_frame(scene, 0, cameras=["CAM_BACK"])


class TestConfigErrors:
    """Config fields are checked on construction."""

    @pytest.mark.parametrize(
        "field, value",
        [
            ("image_size", (0, 10)),
            ("max_boxes", 300),
            ("near_m", -1.0),
            ("line_width_px", 0),
            ("ray_stride", 0),
            ("depth_max_m", 0.05),
        ],
    )
    def test_bad_layout_config_field_is_named(self, field, value):
        with pytest.raises(InvalidConfigError, match=f"LayoutConfig.{field}"):
            LayoutConfig(**{field: value})

    def test_bad_bev_config_is_named(self):
        with pytest.raises(InvalidConfigError, match="BevConfig.metres_per_px"):
            BevConfig(metres_per_px=0.0)


class TestEmptyScene:
    """A scene without boxes or map renders zero rasters and fully padded tokens."""

    def test_empty_scene_renders_empty_tensors(self):
        scene = simple_scene(
            (pinhole_camera("A"), pinhole_camera("B", yaw_deg=90)), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), ()
        )
        config = LayoutConfig(image_size=(32, 48), max_boxes=5)
        out = render_frame(scene, 0, config=config)
        assert out.layout_KCHW.shape == (2, 20, 32, 48) and out.layout_KCHW.sum() == 0
        assert out.control_KHW3.sum() == 0
        assert out.box_corners_KS82.shape == (2, 5, 8, 2) and not out.box_mask_KS.any()
        assert (out.box_class_KS == -1).all() and (out.box_track_KS == -1).all()
        assert out.bev_CHW.sum() == 0

    def test_no_cameras_gives_zero_length_camera_axis(self):
        scene = simple_scene((), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), ())
        out = render_frame(scene, 0, config=LayoutConfig(image_size=(32, 48), max_boxes=5))
        assert out.layout_KCHW.shape == (0, 20, 32, 48)
        assert out.box_params_KSP.shape == (0, 5, 10)
        assert out.plucker_K6hw.shape == (0, 6, 4, 6)

    def test_empty_agents_accept_empty_lists(self):
        assert len(Agents(center=[], size=[], yaw=[], classes=(), track_ids=[])) == 0
