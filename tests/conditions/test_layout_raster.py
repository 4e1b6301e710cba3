"""The per-camera layout raster and control image: map on the ground, boxes as occluding filled
faces with per-pixel depth, consistent channels, colours from the taxonomy, and results that do
not depend on which or how many cameras are rendered."""

import numpy as np
import pytest

from conditions import (
    BOX_CLASSES,
    DEPTH_CHANNEL,
    INSTANCE_CHANNEL,
    LAYOUT_CHANNELS,
    MAP_CLASSES,
    LayoutConfig,
    MapElement,
    control_from_layout,
    depth_from_layout,
    render_frame,
)
from conditions.demo import make_demo_scene, pinhole_camera, simple_scene
from conditions.layout import FACE_SHADES
from conditions.taxonomy import BOX_COLOURS, MAP_COLOURS

SMALL = LayoutConfig(image_size=(90, 160), bev=None)
NUM_MAP = len(MAP_CLASSES)
CAR = 8 + BOX_CLASSES.index("car")


def no_boxes():
    return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), ()


class TestChannels:
    """Channel layout and dtypes are as documented."""

    def test_layout_channel_names_and_dtypes(self):
        assert LAYOUT_CHANNELS[:NUM_MAP] == MAP_CLASSES
        assert LAYOUT_CHANNELS[NUM_MAP:DEPTH_CHANNEL] == BOX_CLASSES
        assert LAYOUT_CHANNELS[DEPTH_CHANNEL:] == ("depth", "instance")
        scene = make_demo_scene(num_agents=20, num_frames=1)
        out = render_frame(scene, 0, config=SMALL)
        assert out.layout_KCHW.dtype == np.uint8 and out.layout_KCHW.shape == (6, 20, 90, 160)
        assert out.control_KHW3.dtype == np.uint8 and out.control_KHW3.shape == (6, 90, 160, 3)
        assert out.layout_KCHW[:, :DEPTH_CHANNEL].max() <= 1


class TestMap:
    """Map geometry lies on the ground: below the horizon, nothing from behind the camera."""

    camera = pinhole_camera(yaw_deg=0.0, position=(0.0, 0.0, 1.5))

    def render(self, *elements, camera=None):
        scene = simple_scene((camera or self.camera,), *no_boxes(), map_elements=elements)
        return render_frame(scene, 0, config=SMALL)

    def test_road_ahead_fills_below_horizon_only(self):
        road = MapElement(cls="drivable_area", points=np.array([[-50, -7], [60, -7], [60, 7], [-50, 7]], float))
        out = self.render(road)
        rows = np.nonzero(out.layout_KCHW[0, 0])[0]
        horizon = 44.5  # principal point row at 90 px high: the camera is level
        assert len(rows) > 0 and rows.min() > horizon
        assert out.layout_KCHW[0, 0, -1].all()  # the bottom row is road, edge to edge

    def test_map_behind_camera_draws_nothing(self):
        road = MapElement(cls="drivable_area", points=np.array([[-50, -7], [-5, -7], [-5, 7], [-50, 7]], float))
        assert self.render(road).layout_KCHW.sum() == 0

    def test_lane_line_ahead_converges_to_vanishing_point(self):
        line = MapElement(cls="lane_divider", points=np.array([[2.0, -1.75], [80.0, -1.75]]))
        out = self.render(line)
        rows, cols = np.nonzero(out.layout_KCHW[0, MAP_CLASSES.index("lane_divider")])
        assert cols.min() >= 79  # right of the centre: the line is on the right
        top = rows == rows.min()
        assert abs(cols[top].mean() - 79.5) < 4  # far end near the vanishing point

    def test_polygon_holes_stay_empty(self):
        outer = np.array([[5, -20], [60, -20], [60, 20], [5, 20]], float)
        hole = np.array([[15, -3], [25, -3], [25, 3], [15, 3]], float)
        out = self.render(MapElement(cls="carpark_area", points=outer, holes=(hole,)))
        ch = out.layout_KCHW[0, MAP_CLASSES.index("carpark_area")]
        # The ray through the image centre column hits the ground inside the hole at 20 m.
        row_20m = int(round(44.5 + 1266 * 90 / 900 * 1.5 / 20))
        assert ch[row_20m, 79] == 0 and ch[row_20m, 5] == 1

    def test_large_area_fills_without_seams(self):
        """A city-sized area is cut into tiles internally; the tiles must not leave gaps."""
        big = MapElement(
            cls="drivable_area", points=np.array([[-500, -500], [500, -500], [500, 500], [-500, 500]], float)
        )
        for yaw in (0.0, 17.0, 45.0, 133.0):
            out = self.render(big, camera=pinhole_camera(yaw_deg=yaw, position=(0.3, 0.2, 1.5)))
            assert out.layout_KCHW[0, 0, 48:].all()

    def test_overlapping_polygons_of_one_class_fill_their_union(self):
        a = MapElement(cls="walkway", points=np.array([[5, -5], [30, -5], [30, 5], [5, 5]], float))
        b = MapElement(cls="walkway", points=np.array([[10, -2], [40, -2], [40, 2], [10, 2]], float))
        out = self.render(a, b)
        ch = out.layout_KCHW[0, MAP_CLASSES.index("walkway")]
        row_15m = int(round(44.5 + 1266 * 90 / 900 * 1.5 / 15))
        assert ch[row_15m, 79] == 1  # inside both: still filled (no even-odd cancellation)


class TestBoxes:
    """Boxes are filled visible faces; the nearest box wins a pixel; depth follows each face."""

    camera = pinhole_camera(yaw_deg=0.0, position=(0.0, 0.0, 1.5))

    def test_front_face_depth_decodes_to_distance(self):
        # Rear face of a car 20 m ahead faces the camera: z = 20 - 4.5 / 2 across the face.
        scene = simple_scene((self.camera,), [[20.0, 0, 1.5]], [[4.5, 2.0, 1.5]], [0.0], ("car",))
        out = render_frame(scene, 0, config=SMALL)
        z = depth_from_layout(out.layout_KCHW[0], SMALL.depth_max_m)
        inner = z[42:47, 77:82]
        assert np.all(np.abs(inner - 17.75) < SMALL.depth_max_m / 255 + 1e-3)
        assert np.isnan(z[0, 0])

    def test_side_face_depth_increases_along_the_face(self):
        scene = simple_scene((self.camera,), [[15.0, -4.0, 1.5]], [[10.0, 2.5, 3.0]], [0.0], ("truck",))
        out = render_frame(scene, 0, config=SMALL)
        z = depth_from_layout(out.layout_KCHW[0], SMALL.depth_max_m)
        row = z[44]
        cols = np.nonzero(~np.isnan(row))[0]
        # The visible left side runs from 10 m (image right) to 20 m (towards the centre).
        assert row[cols.min()] > row[cols.max()] + 3

    def test_nearer_box_occludes_farther_box(self):
        scene = simple_scene(
            (self.camera,),
            [[30.0, 0, 1.5], [12.0, 0, 1.0]],
            [[4.5, 2.0, 1.5], [0.7, 0.7, 1.8]],
            [0.0, 0.0],
            ("car", "pedestrian"),
        )
        out = render_frame(scene, 0, config=SMALL)
        slots = {t: s for s, t in enumerate(out.box_track_KS[0]) if t >= 0}
        instance = out.layout_KCHW[0, INSTANCE_CHANNEL]
        assert instance[44, 79] == slots[1] + 1  # the pedestrian, in front
        assert out.layout_KCHW[0, 8 + BOX_CLASSES.index("pedestrian"), 44, 79] == 1
        assert out.layout_KCHW[0, CAR, 44, 79] == 0
        assert out.box_visible_px_KS[0, slots[0]] > 0  # the car still shows around it

    def test_box_channels_are_exclusive_and_match_instance(self):
        scene = make_demo_scene(num_agents=60, num_frames=1)
        out = render_frame(scene, 0, config=SMALL)
        boxes = out.layout_KCHW[:, NUM_MAP:DEPTH_CHANNEL].sum(axis=1)
        inst = out.layout_KCHW[:, INSTANCE_CHANNEL]
        np.testing.assert_array_equal(boxes, (inst > 0).astype(boxes.dtype))
        np.testing.assert_array_equal(out.layout_KCHW[:, DEPTH_CHANNEL] > 0, inst > 0)

    def test_farthest_boxes_beyond_max_boxes_are_dropped_and_counted(self):
        xs = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
        scene = simple_scene(
            (self.camera,),
            np.column_stack([xs, np.zeros(5), np.full(5, 1.0)]),
            np.tile([0.5, 0.5, 0.5], (5, 1)),
            np.zeros(5),
            ("traffic_cone",) * 5,
        )
        out = render_frame(scene, 0, config=LayoutConfig(image_size=(90, 160), max_boxes=2, bev=None))
        assert out.num_boxes_dropped_K[0] == 3
        assert set(out.box_track_KS[0]) == {0, 1}
        assert set(np.unique(out.layout_KCHW[0, INSTANCE_CHANNEL])) <= {0, 1, 2}


class TestControlImage:
    """Colours come from the taxonomy: map classes in fixed colours, boxes by class and face."""

    camera = pinhole_camera(yaw_deg=0.0, position=(0.0, 0.0, 1.5))

    def test_colours_follow_classes_and_faces(self):
        road = MapElement(cls="drivable_area", points=np.array([[0, -7], [80, -7], [80, 7], [0, 7]], float))
        scene = simple_scene((self.camera,), [[20.0, 0, 1.5]], [[4.5, 2.0, 1.5]], [0.0], ("car",), map_elements=(road,))
        out = render_frame(scene, 0, config=SMALL)
        control = out.control_KHW3[0]
        assert tuple(control[0, 0]) == (0, 0, 0)  # sky
        assert tuple(control[85, 20]) == MAP_COLOURS["drivable_area"]
        rear = np.round(np.array(BOX_COLOURS["car"]) * FACE_SHADES[1])  # we see the car's rear
        assert tuple(control[44, 79]) == tuple(rear)

    def test_control_from_layout_matches_on_map_pixels(self):
        scene = make_demo_scene(num_agents=30, num_frames=1)
        out = render_frame(scene, 0, config=SMALL)
        for k in range(6):
            again = control_from_layout(out.layout_KCHW[k])
            no_box = out.layout_KCHW[k, INSTANCE_CHANNEL] == 0
            np.testing.assert_array_equal(again[no_box], out.control_KHW3[k][no_box])

    def test_outline_only_changes_box_pixels(self):
        scene = make_demo_scene(num_agents=30, num_frames=1)
        plain = render_frame(scene, 0, config=LayoutConfig(image_size=(90, 160), bev=None, control_outline=False))
        lined = render_frame(scene, 0, config=SMALL)
        changed = np.any(plain.control_KHW3 != lined.control_KHW3, axis=-1)
        assert changed.any()
        assert np.all(lined.layout_KCHW[:, INSTANCE_CHANNEL][changed] > 0)


class TestCameraIndependence:
    """A camera's outputs are identical whatever other cameras are rendered with it."""

    def test_each_camera_alone_equals_all_cameras_together(self):
        scene = make_demo_scene(num_agents=60, num_frames=1)
        together = render_frame(scene, 0, config=SMALL)
        for k, name in enumerate(scene.camera_names):
            alone = render_frame(scene, 0, cameras=[name], config=SMALL)
            for field in (
                "layout_KCHW",
                "control_KHW3",
                "box_corners_KS82",
                "box_params_KSP",
                "box_mask_KS",
                "plucker_K6hw",
            ):
                np.testing.assert_array_equal(getattr(alone, field)[0], getattr(together, field)[k], err_msg=field)

    def test_reordered_cameras_give_reordered_outputs(self):
        scene = make_demo_scene(num_agents=60, num_frames=1)
        names = list(scene.camera_names)
        forward = render_frame(scene, 0, cameras=names, config=SMALL)
        backward = render_frame(scene, 0, cameras=names[::-1], config=SMALL)
        np.testing.assert_array_equal(forward.layout_KCHW[::-1], backward.layout_KCHW)


class TestDistortion:
    """A distorted camera renders finite outputs; what is straight ahead stays at the centre."""

    @pytest.mark.parametrize("dist", [np.array([-0.3, 0.1, 0.001, -0.001, -0.02]), np.array([0.05, 0.0, 0.0, 0.0])])
    def test_distorted_camera_keeps_centre_box_and_draws_map(self, dist):
        cam = pinhole_camera(position=(0.0, 0.0, 1.5), distortion=dist, focal_px=1266.0)
        road = MapElement(cls="drivable_area", points=np.array([[0, -7], [80, -7], [80, 7], [0, 7]], float))
        scene = simple_scene(
            (cam,),
            [[20.0, 0, 1.5], [6.0, -4, 1.0]],
            [[4.5, 2.0, 1.5], [4.5, 2.0, 1.5]],
            [0.0, 0.3],
            ("car", "car"),
            map_elements=(road,),
        )
        out = render_frame(scene, 0, config=SMALL)
        rows, cols = np.nonzero(out.layout_KCHW[0, INSTANCE_CHANNEL] == out.box_track_KS[0].tolist().index(0) + 1)
        assert abs(cols.mean() - 79.5) < 2 and abs(rows.mean() - 44.5) < 2
        assert out.layout_KCHW[0, 0].sum() > 0
        assert np.isfinite(out.box_corners_KS82).all() and np.isfinite(out.plucker_K6hw).all()
