"""The BEV raster is ego-centred and ego-aligned: forward is up, left is left, at the configured
size and resolution, with map classes and box footprints as channels."""

import numpy as np

from conditions import BEV_CHANNELS, BOX_CLASSES, MAP_CLASSES, BevConfig, LayoutConfig, MapElement, render_frame
from conditions.demo import make_demo_scene, pinhole_camera, simple_scene
from conditions.geometry import rigid_transform

NUM_MAP = len(MAP_CLASSES)


def render_bev(center, size, yaw, classes, elements=(), pose=None, bev=BevConfig(size_px=(100, 80), metres_per_px=0.5)):
    scene = simple_scene((pinhole_camera(),), center, size, yaw, classes, ego_to_world=pose, map_elements=elements)
    return render_frame(scene, 0, config=LayoutConfig(image_size=(8, 8), bev=bev)).bev_CHW


def rotation_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


class TestBevOrientation:
    """A box ahead of the ego is above the centre, one on its left is left of the centre."""

    def test_box_ahead_is_above_centre(self):
        bev = render_bev([[10.0, 0, 1]], [[4.0, 2.0, 1.5]], [0.0], ("car",))
        rows, cols = np.nonzero(bev[NUM_MAP + BOX_CLASSES.index("car")])
        assert abs(rows.mean() - (49.5 - 20)) < 1 and abs(cols.mean() - 39.5) < 1
        assert rows.max() - rows.min() + 1 in (8, 9) and cols.max() - cols.min() + 1 in (4, 5)

    def test_box_on_the_left_is_left_of_centre(self):
        bev = render_bev([[0.0, 8.0, 1]], [[1.0, 1.0, 1.0]], [0.0], ("pedestrian",))
        rows, cols = np.nonzero(bev[NUM_MAP + BOX_CLASSES.index("pedestrian")])
        assert abs(cols.mean() - (39.5 - 16)) < 1 and abs(rows.mean() - 49.5) < 1

    def test_world_pose_is_undone(self):
        """The same ego-relative layout under a rotated, shifted world pose gives the same raster."""
        pose = rigid_transform(rotation_z(2.2), [350.0, -120.0, 0.0])
        ego_boxes = np.array([[10.0, 3.0, 1.0], [-6.0, -2.0, 1.0]])
        world_boxes = ego_boxes @ pose[:3, :3].T + pose[:3, 3]
        line = np.array([[-20.0, -1.75], [30.0, -1.75]])
        world_line = line @ pose[:2, :2].T + pose[:2, 3]
        plain = render_bev(
            ego_boxes, [[4.0, 2, 1.5]] * 2, [0.3, -1.0], ("car", "bus"), (MapElement(cls="lane_divider", points=line),)
        )
        posed = render_bev(
            world_boxes,
            [[4.0, 2, 1.5]] * 2,
            [0.3 + 2.2, -1.0 + 2.2],
            ("car", "bus"),
            (MapElement(cls="lane_divider", points=world_line),),
            pose=pose,
        )
        assert np.mean(plain != posed) < 0.002  # rounding may move an edge pixel
        assert plain[MAP_CLASSES.index("lane_divider")].sum() > 0


class TestBevContent:
    """Channels are the map classes then the box classes, 0/1, at the configured size."""

    def test_demo_frame_has_map_and_boxes(self):
        scene = make_demo_scene(num_agents=60, num_frames=1)
        bev = render_frame(scene, 0, config=LayoutConfig(image_size=(16, 16))).bev_CHW
        assert bev.shape == (len(BEV_CHANNELS), 200, 200) and bev.dtype == np.uint8 and bev.max() == 1
        assert bev[MAP_CLASSES.index("drivable_area")].mean() > 0.1
        assert bev[NUM_MAP + BOX_CLASSES.index("car")].sum() > 0
        # The ego stands on the drivable area.
        assert bev[MAP_CLASSES.index("drivable_area"), 99:101, 99:101].all()

    def test_map_outside_window_is_not_drawn(self):
        far = MapElement(cls="walkway", points=np.array([[100.0, 100], [110, 100], [110, 110], [100, 110]]))
        assert render_bev(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), (), (far,)).sum() == 0
