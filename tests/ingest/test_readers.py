"""Readers return the generator's ground truth: poses, calibrations, boxes, map, classes, pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conditions import LayoutConfig, Scene, render_frame
from conditions.scene import Agents, Frame
from drivegen.errors import DrivegenError, LogError
from drivegen.data.ingest import LogReader, LogRef, discover_logs, open_log
from drivegen.data.ingest.nuscenes import interpolate_yaw


@pytest.fixture(scope="module")
def readers(sample):
    return {"nuscenes": open_log(sample.nuscenes.ref), "waymo": open_log(sample.waymo.ref)}


KINDS = ("nuscenes", "waymo")


def _by_key(agents: Agents, keys: tuple[str, ...]) -> dict[str, int]:
    return {keys[t]: i for i, t in enumerate(agents.track_ids)}


def _angle_diff(a, b):
    return np.abs(np.arctan2(np.sin(a - b), np.cos(a - b)))


class TestDiscovery:
    """discover_logs finds every nuScenes scene and Waymo segment under a folder."""

    def test_finds_both_sample_logs(self, sample):
        refs = discover_logs(sample.root)
        assert refs == [sample.nuscenes.ref, sample.waymo.ref]

    def test_missing_root_raises(self, tmp_path):
        with pytest.raises(LogError, match="not a directory"):
            discover_logs(tmp_path / "nope")

    def test_corrupt_scene_table_is_named(self, tmp_path):
        (tmp_path / "v1.0-mini").mkdir()
        (tmp_path / "v1.0-mini" / "scene.json").write_text("{not json")
        with pytest.raises(LogError, match=r"scene\.json"):
            discover_logs(tmp_path)

    def test_unknown_kind_raises(self):
        with pytest.raises(LogError, match="kind"):
            open_log(LogRef(kind="argoverse", path=".", name="x"))


@pytest.mark.parametrize("kind", KINDS)
class TestReaderMatchesTruth:
    """Each reader reproduces the world the generator wrote, within float tolerance."""

    def test_is_a_log_reader_with_images(self, readers, kind):
        assert isinstance(readers[kind], LogReader) and readers[kind].has_images

    def test_cameras_match_calibration(self, readers, sample, kind):
        got, want = readers[kind].scene, getattr(sample, kind).scene
        assert got.camera_names == want.camera_names
        for g, w in zip(got.cameras, want.cameras):
            assert g.image_size == w.image_size
            np.testing.assert_allclose(g.intrinsics, w.intrinsics, atol=1e-4)
            np.testing.assert_allclose(g.cam_to_ego, w.cam_to_ego, atol=1e-6)

    def test_frames_timestamps_and_ego_poses(self, readers, sample, kind):
        got, want = readers[kind].scene, getattr(sample, kind).scene
        assert [f.timestamp_us for f in got.frames] == [f.timestamp_us for f in want.frames]
        for g, w in zip(got.frames, want.frames):
            np.testing.assert_allclose(g.ego_to_world, w.ego_to_world, atol=1e-6)

    def test_boxes_every_frame(self, readers, sample, kind):
        reader, truth = readers[kind], getattr(sample, kind)
        assert reader.track_keys == truth.track_keys
        for t, (g, w) in enumerate(zip(reader.scene.frames, truth.scene.frames)):
            gi, wi = _by_key(g.agents, reader.track_keys), _by_key(w.agents, truth.track_keys)
            assert gi.keys() == wi.keys(), f"frame {t}"
            order_g = [gi[k] for k in wi]
            order_w = list(wi.values())
            np.testing.assert_allclose(g.agents.center[order_g], w.agents.center[order_w], atol=1e-3)
            np.testing.assert_allclose(g.agents.size[order_g], w.agents.size[order_w], atol=1e-5)
            assert _angle_diff(g.agents.yaw[order_g], w.agents.yaw[order_w]).max(initial=0) < 1e-5
            assert [g.agents.classes[i] for i in order_g] == [w.agents.classes[i] for i in order_w]
            np.testing.assert_allclose(g.agents.velocity[order_g], w.agents.velocity[order_w], atol=1e-3)

    def test_box_count_per_keyframe(self, readers, sample, kind):
        truth = getattr(sample, kind)
        for f in truth.keyframes:
            assert len(readers[kind].scene.frames[f].agents) == len(truth.track_keys)

    def test_unmapped_labels_are_reported(self, readers, sample, kind):
        assert readers[kind].scene.source.unmapped_classes == getattr(sample, kind).unmapped

    def test_map_elements_come_from_the_world_map(self, readers, sample, kind):
        got, want = readers[kind].scene.map_elements, getattr(sample, kind).scene.map_elements

        def fingerprint(el):  # ring closure and start vertex do not matter
            pts = el.points[:-1] if len(el.points) > 2 and np.allclose(el.points[0], el.points[-1]) else el.points
            return np.sort(pts, axis=0)

        want_prints = [(el.cls, fingerprint(el)) for el in want]

        def in_world(el):
            fp = fingerprint(el)
            return any(c == el.cls and w.shape == fp.shape and np.abs(w - fp).max() < 1e-2 for c, w in want_prints)

        assert got and all(in_world(el) for el in got)
        classes = {el.cls for el in got}
        expected = {"road_edge", "lane_divider", "road_divider", "ped_crossing"}
        if kind == "nuscenes":
            expected |= {"drivable_area", "walkway", "stop_line", "carpark_area"}
        assert expected <= classes

    def test_jpeg_pixels_agree_with_annotations(self, readers, sample, kind):
        """Rendering the reader's scene (with the class each box is drawn with) reproduces the JPEG,
        and the nearest box's pixels carry its class colour."""
        reader, truth = readers[kind], getattr(sample, kind)
        frame_idx = truth.keyframes[1]
        frame = reader.scene.frames[frame_idx]
        world_classes = tuple(truth.world_classes[reader.track_keys[t]] for t in frame.agents.track_ids)
        agents = dataclasses.replace(frame.agents, classes=world_classes)
        one = Scene(cameras=reader.scene.cameras, frames=(Frame(timestamp_us=frame.timestamp_us,
                    ego_to_world=frame.ego_to_world, agents=agents),),
                    map_elements=truth.world_map, source=reader.scene.source)
        cam = reader.scene.camera_names[0]
        out = render_frame(one, 0, [cam], LayoutConfig(image_size=sample.image_size, bev=None, max_boxes=254))
        jpeg = reader.image(cam, frame_idx).astype(np.float64)
        control = out.control_KHW3[0].astype(np.float64)
        assert jpeg.shape == control.shape
        assert np.abs(jpeg - control).mean() < 6.0
        # the nearest box in view (slot 0): its instance pixels are its class colour
        instance = out.layout_KCHW[0, -1]
        region = instance == 1
        assert out.box_mask_KS[0, 0] and region.sum() > 30
        assert np.abs(jpeg[region] - control[region]).mean() < 12.0
        cls = world_classes[list(agents.track_ids).index(out.box_track_KS[0, 0])]
        from conditions.taxonomy import BOX_COLOURS

        colour = np.array(BOX_COLOURS[cls], np.float64)
        # faces are shaded copies of the class colour: the mean pixel is parallel to it
        mean = jpeg[region].mean(axis=0)
        cos = mean @ colour / (np.linalg.norm(mean) * np.linalg.norm(colour))
        assert cos > 0.95, (cls, mean)


class TestInterpolation:
    """Yaw interpolates along the shortest arc, across the +-pi seam."""

    def test_yaw_wraps_across_pi(self):
        y = interpolate_yaw(np.array([np.pi - 0.1]), np.array([-np.pi + 0.1]), 0.5)
        assert _angle_diff(y, np.pi).max() < 1e-9

    def test_endpoints(self):
        y0, y1 = np.array([0.3]), np.array([-2.0])
        assert _angle_diff(interpolate_yaw(y0, y1, 0.0), y0).max() < 1e-12
        assert _angle_diff(interpolate_yaw(y0, y1, 1.0), y1).max() < 1e-12


class TestTrackEnds:
    """A track annotated at only one of two keyframes is held at that box while the frame is
    nearer to its keyframe, then dropped (appears / leaves without blinking); velocity NaN."""

    KEY_T = np.array([0, 500_000])
    CAR0 = (np.array([0.0, 0.0, 0.8]), np.array([4.0, 2.0, 1.6]), 0.0, "car")
    CAR1 = (np.array([5.0, 0.0, 0.8]), np.array([4.0, 2.0, 1.6]), 0.0, "car")
    PED = (np.array([3.0, 4.0, 0.9]), np.array([0.7, 0.7, 1.8]), 1.0, "pedestrian")
    CONE = (np.array([8.0, -2.0, 0.4]), np.array([0.4, 0.4, 0.8]), 0.0, "traffic_cone")

    def agents(self, t):
        from drivegen.data.ingest.nuscenes import NuScenesReader

        return NuScenesReader._agents_at(t, self.KEY_T, [{0: self.CAR0, 1: self.PED}, {0: self.CAR1, 2: self.CONE}])

    def test_early_frame_keeps_the_leaving_track(self):
        a = self.agents(100_000)
        assert a.track_ids.tolist() == [0, 1]
        np.testing.assert_allclose(a.center[0], [1.0, 0.0, 0.8])
        np.testing.assert_allclose(a.velocity[0], [10.0, 0.0])
        assert np.isnan(a.velocity[1]).all()

    def test_late_frame_has_the_appearing_track(self):
        a = self.agents(400_000)
        assert a.track_ids.tolist() == [0, 2]
        np.testing.assert_allclose(a.center[0], [4.0, 0.0, 0.8])


def test_log_error_carries_log_and_reason():
    err = LogError("seg", "bad CRC")
    assert isinstance(err, DrivegenError) and isinstance(err, ValueError)
    assert (err.log, err.reason) == ("seg", "bad CRC") and "seg" in str(err) and "bad CRC" in str(err)
