"""Properties over random boxes, poses, cameras and maps (hypothesis): outputs have the declared
shapes and dtypes, contain no NaN, and the masks agree with what was drawn."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conditions import (
    BOX_CLASSES,
    BOX_PARAM_NAMES,
    DEPTH_CHANNEL,
    INSTANCE_CHANNEL,
    MAP_CLASSES,
    BevConfig,
    Camera,
    InvalidCameraError,
    LayoutConfig,
    MapElement,
    render_frame,
)
from conditions.demo import simple_scene
from conditions.geometry import box_corners, camera_view, project_boxes, quaternion_to_matrix, rigid_transform
from conditions.layout import COLOUR_LUT

NUM_MAP = len(MAP_CLASSES)
# Deterministic and modest for CI (~2 s); runs with thousands of random examples passed locally.
PROFILE = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def cameras(draw, name):
    H = draw(st.integers(4, 600))
    W = draw(st.integers(4, 900))
    f = draw(st.floats(30, 3000, **finite))
    K = np.array(
        [
            [f * draw(st.floats(0.8, 1.25)), 0, draw(st.floats(-0.2, 1.2)) * W],
            [0, f, draw(st.floats(-0.2, 1.2)) * H],
            [0, 0, 1],
        ]
    )
    q = np.array([draw(st.floats(-1, 1, **finite)) for _ in range(4)])
    if np.linalg.norm(q) < 1e-3:
        q = np.array([0.5, -0.5, 0.5, -0.5])  # the nuScenes front camera
    position = [draw(st.floats(-3, 3, **finite)) for _ in range(2)] + [draw(st.floats(0.3, 3, **finite))]
    dist = None
    if draw(st.booleans()):
        dist = np.array(
            [
                draw(st.floats(-0.3, 0.3)),
                draw(st.floats(-0.05, 0.05)),
                draw(st.floats(-0.01, 0.01)),
                draw(st.floats(-0.01, 0.01)),
            ]
        )
    cam_to_ego = rigid_transform(quaternion_to_matrix(q), position)
    try:
        return Camera(name=name, intrinsics=K, cam_to_ego=cam_to_ego, image_size=(H, W), distortion=dist)
    except InvalidCameraError:  # coefficients that fold back inside this (wide) image
        return Camera(name=name, intrinsics=K, cam_to_ego=cam_to_ego, image_size=(H, W))


@st.composite
def scenes(draw):
    yaw = draw(st.floats(-np.pi, np.pi))
    tilt = draw(st.floats(-0.05, 0.05))
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]]
    )
    t = np.array([draw(st.floats(-2000, 2000)), draw(st.floats(-2000, 2000)), draw(st.floats(-5, 5))])
    pose = rigid_transform(R, t)
    n = draw(st.integers(0, 12))
    local = np.array(
        [[draw(st.floats(-30, 30)), draw(st.floats(-30, 30)), draw(st.floats(-1, 4))] for _ in range(n)]
    ).reshape(-1, 3)
    center = local @ R.T + t
    size = np.array([[draw(st.floats(0.05, 15)) for _ in range(3)] for _ in range(n)]).reshape(-1, 3)
    yaws = np.array([draw(st.floats(-4, 4)) for _ in range(n)])
    classes = tuple(draw(st.sampled_from(BOX_CLASSES)) for _ in range(n))
    elements = []
    for _ in range(draw(st.integers(0, 4))):
        cls = draw(st.sampled_from(MAP_CLASSES))
        npts = draw(st.integers(3, 7))
        pts = np.array([[draw(st.floats(-60, 60)), draw(st.floats(-60, 60))] for _ in range(npts)]) + t[:2]
        elements.append(MapElement(cls=cls, points=pts))
    cams = tuple(draw(cameras(f"CAM{i}")) for i in range(draw(st.integers(1, 3))))
    return simple_scene(cams, center, size, yaws, classes, ego_to_world=pose, map_elements=tuple(elements))


@st.composite
def configs(draw):
    return LayoutConfig(
        image_size=(draw(st.integers(8, 48)), draw(st.integers(8, 64))),
        max_boxes=draw(st.integers(1, 16)),
        near_m=draw(st.floats(0.05, 1.0)),
        line_width_px=draw(st.integers(1, 3)),
        ray_stride=draw(st.integers(1, 9)),
        bev=BevConfig(
            size_px=(draw(st.integers(8, 40)), draw(st.integers(8, 40))), metres_per_px=draw(st.floats(0.2, 2.0))
        ),
    )


class TestRenderProperties:
    """For any valid scene and config: declared shapes, no NaN, masks consistent with pixels."""

    @PROFILE
    @given(scene=scenes(), config=configs())
    def test_outputs_are_shaped_finite_and_consistent(self, scene, config):
        out = render_frame(scene, 0, config=config)
        K, S, (H, W) = len(scene.cameras), config.max_boxes, config.image_size
        h, w = -(-H // config.ray_stride), -(-W // config.ray_stride)
        expected = {
            "layout_KCHW": ((K, 20, H, W), np.uint8),
            "control_KHW3": ((K, H, W, 3), np.uint8),
            "box_corners_KS82": ((K, S, 8, 2), np.float32),
            "box_corner_mask_KS8": ((K, S, 8), np.bool_),
            "box_params_KSP": ((K, S, len(BOX_PARAM_NAMES)), np.float32),
            "box_class_KS": ((K, S), np.int64),
            "box_track_KS": ((K, S), np.int64),
            "box_mask_KS": ((K, S), np.bool_),
            "box_visible_px_KS": ((K, S), np.int64),
            "num_boxes_dropped_K": ((K,), np.int64),
            "intrinsics_K33": ((K, 3, 3), np.float32),
            "cam_to_ego_K44": ((K, 4, 4), np.float32),
            "plucker_K6hw": ((K, 6, h, w), np.float32),
            "bev_CHW": ((18,) + config.bev.size_px, np.uint8),
        }
        for field, (shape, dtype) in expected.items():
            value = getattr(out, field)
            assert value.shape == shape and value.dtype == dtype, field
            if value.dtype.kind == "f":
                assert np.isfinite(value).all(), field

        layout = out.layout_KCHW
        assert layout[:, :DEPTH_CHANNEL].max(initial=0) <= 1
        inst = layout[:, INSTANCE_CHANNEL]
        # Box class channels are exclusive and cover exactly the instance pixels; so does depth.
        np.testing.assert_array_equal(layout[:, NUM_MAP:DEPTH_CHANNEL].sum(axis=1), inst > 0)
        np.testing.assert_array_equal(layout[:, DEPTH_CHANNEL] > 0, inst > 0)
        assert out.bev_CHW.max(initial=0) <= 1

        for k in range(K):
            mask = out.box_mask_KS[k]
            n = int(mask.sum())
            # Slots fill from the front, nearest first; padding is -1 / zero / False.
            assert mask[:n].all() and not mask[n:].any()
            assert (out.box_class_KS[k, n:] == -1).all() and (out.box_track_KS[k, n:] == -1).all()
            assert not out.box_params_KSP[k, n:].any() and not out.box_corner_mask_KS8[k, n:].any()
            assert (out.box_class_KS[k, :n] >= 0).all()
            assert len(set(out.box_track_KS[k, :n].tolist())) == n
            # Every drawn instance is a masked-in slot of the right class; pixel counts agree.
            counts = np.bincount(inst[k].ravel(), minlength=S + 1)
            assert counts[n + 1 :].sum() == 0
            np.testing.assert_array_equal(counts[1:], out.box_visible_px_KS[k])
            for s in range(n):
                if counts[s + 1]:
                    cls = out.box_class_KS[k, s]
                    assert layout[k, NUM_MAP + cls][inst[k] == s + 1].all()
            # Corners without a projection are zero.
            assert not out.box_corners_KS82[k][~out.box_corner_mask_KS8[k]].any()
            # Empty pixels (no map, no box) are black; box pixels use their class's colours.
            empty = (layout[k, :NUM_MAP].sum(axis=0) == 0) & (inst[k] == 0)
            assert not out.control_KHW3[k][empty].any()
            for s in range(n):
                if counts[s + 1]:
                    palette = COLOUR_LUT[16 * (out.box_class_KS[k, s] + 1) : 16 * (out.box_class_KS[k, s] + 1) + 8]
                    colours = out.control_KHW3[k][inst[k] == s + 1]
                    assert np.all((colours[:, None, :] == palette[None]).all(-1).any(-1))
        assert out.num_boxes_dropped_K.min(initial=0) >= 0

    @PROFILE
    @given(scene=scenes(), data=st.data())
    def test_a_box_alone_in_view_draws_pixels(self, scene, data):
        """Alone (nothing occludes it), a box draws pixels exactly when its mask is True, except
        for slivers: a part in view less than a pixel wide or high may cover no pixel centre.
        With lens distortion the in-view test is conservative (projected extent meets the image),
        so there only "draws pixels => mask True" holds."""
        agents = scene.frames[0].agents
        if len(agents) == 0:
            return
        i = data.draw(st.integers(0, len(agents) - 1))
        single = simple_scene(
            scene.cameras,
            agents.center[i : i + 1],
            agents.size[i : i + 1],
            agents.yaw[i : i + 1],
            agents.classes[i : i + 1],
            ego_to_world=scene.frames[0].ego_to_world,
        )
        config = LayoutConfig(image_size=(40, 64), bev=None)
        out = render_frame(single, 0, config=config)
        for k, cam in enumerate(scene.cameras):
            if out.box_mask_KS[k, 0] and cam.distortion is None and out.box_visible_px_KS[k, 0] == 0:
                view = camera_view(
                    cam.name,
                    cam.intrinsics,
                    cam.image_size,
                    cam.cam_to_ego,
                    None,
                    single.frames[0].ego_to_world,
                    config.image_size,
                    config.near_m,
                )
                corners = box_corners(agents.center[i : i + 1], agents.size[i : i + 1], agents.yaw[i : i + 1])
                faces = project_boxes(view, corners, config.near_m)
                valid = np.arange(faces.face_uv_FV2.shape[1])[None, :] < faces.face_count_F[:, None]
                uv = faces.face_uv_FV2[valid]
                extent = uv.max(axis=0) - uv.min(axis=0)
                assert extent.min() < 1.0, f"in view, {extent} px across, but no pixel drawn"
            if not out.box_mask_KS[k, 0]:
                assert out.box_visible_px_KS[k, 0] == 0
