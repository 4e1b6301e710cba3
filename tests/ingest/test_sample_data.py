"""The bundled sample logs: real-format files that the official tools load, small and deterministic."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from drivegen.errors import DrivegenError, StoreError
from drivegen.data.sample_data import NUSCENES_LOCATION, NUSCENES_VERSION, generate_sample_logs


class TestNuScenesDataroot:
    """nuscenes-devkit loads the written dataroot and its map expansion unchanged."""

    def test_devkit_loads_tables_with_keyframes_and_sweeps(self, sample):
        from nuscenes.nuscenes import NuScenes

        with contextlib.redirect_stdout(io.StringIO()):
            nusc = NuScenes(NUSCENES_VERSION, sample.nuscenes.ref.path, verbose=False)
        assert [s["name"] for s in nusc.scene] == [sample.nuscenes.ref.name]
        assert len(nusc.sample) == len(sample.nuscenes.keyframes)
        cams = [c for c in nusc.sensor if c["modality"] == "camera"]
        assert len(cams) == 6
        # every sample has all six cameras as keyframes; sweeps fill in at 12 Hz
        for s in nusc.sample:
            assert len(s["data"]) == 6
            assert len(s["anns"]) == len(sample.nuscenes.track_keys) + 1  # + the unmapped animal
        front = sorted(sd["timestamp"] for sd in nusc.sample_data if sd["channel"] == "CAM_FRONT")
        assert len(front) == len(sample.nuscenes.scene.frames)
        assert np.allclose(np.diff(front), 1e6 / 12, atol=1)
        key = sorted(sd["timestamp"] for sd in nusc.sample_data if sd["channel"] == "CAM_FRONT" and sd["is_key_frame"])
        assert np.allclose(np.diff(key), 5e5, atol=1)
        # the devkit's own box query agrees with the annotations
        _, boxes, K = nusc.get_sample_data(nusc.sample[0]["data"]["CAM_FRONT"])
        assert len(boxes) > 0 and K.shape == (3, 3)

    def test_map_api_loads_expansion_and_ego_is_on_the_road(self, sample):
        from nuscenes.map_expansion.map_api import NuScenesMap

        nmap = NuScenesMap(sample.nuscenes.ref.path, NUSCENES_LOCATION)
        assert nmap.version >= "1.3"
        for layer in ("drivable_area", "road_segment", "lane", "ped_crossing", "walkway", "stop_line",
                      "carpark_area", "road_divider", "lane_divider"):
            assert len(getattr(nmap, layer)) > 0, layer
        x, y = sample.nuscenes.scene.frames[0].ego_to_world[:2, 3]
        on = nmap.layers_on_point(x, y)
        assert on["drivable_area"] and on["lane"] and not on["walkway"]


class TestWaymoSegment:
    """The segment parses with the official protos: calibrations, labels, map on frame 0 only."""

    def test_records_parse_as_frames(self, sample):
        from waymo_open_dataset import dataset_pb2

        from drivegen.data.ingest.tfrecord import iter_records

        frames = []
        for _, payload in iter_records(sample.waymo.ref.path):
            f = dataset_pb2.Frame()
            f.ParseFromString(payload)
            frames.append(f)
        assert len(frames) == len(sample.waymo.scene.frames)
        f0 = frames[0]
        names = {dataset_pb2.CameraName.Name.Name(c.name) for c in f0.context.camera_calibrations}
        assert names == {"FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT"}
        assert all(len(c.intrinsic) == 9 and len(c.extrinsic.transform) == 16 for c in f0.context.camera_calibrations)
        assert len(f0.map_features) > 0 and all(len(f.map_features) == 0 for f in frames[1:])
        assert all(len(f.images) == 5 and len(f.laser_labels) == len(sample.waymo.track_keys) + 1 for f in frames)
        assert np.diff([f.timestamp_micros for f in frames]).tolist() == [100_000] * (len(frames) - 1)
        # Waymo's camera frame is x forward, y left, z up: a forward camera's extrinsic rotation is
        # the identity, as in real segments (a conditions-frame extrinsic would not be).
        front = next(c for c in f0.context.camera_calibrations if c.name == dataset_pb2.CameraName.FRONT)
        np.testing.assert_allclose(np.reshape(front.extrinsic.transform, (4, 4))[:3, :3], np.eye(3), atol=1e-9)


class TestGeneration:
    """Generation is seeded, byte-identical, small, atomic, and does not overwrite without --force."""

    def test_sample_is_a_few_mb(self, sample):
        total = sum(sample.files.values())
        assert 0.5e6 < total < 6e6, total

    def test_same_seed_gives_identical_bytes(self, tmp_path):
        a = generate_sample_logs(tmp_path / "a", image_size=(36, 64), seed=3, nuscenes_scenes=1)
        b = generate_sample_logs(tmp_path / "b", image_size=(36, 64), seed=3, nuscenes_scenes=1)
        assert a.files == b.files
        for rel in a.files:
            assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
        c = generate_sample_logs(tmp_path / "c", image_size=(36, 64), seed=4, nuscenes_scenes=1)
        assert any((a.root / r).read_bytes() != (c.root / r).read_bytes() for r in a.files if r in c.files)
        assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]  # temp folders renamed away

    def test_existing_output_is_kept_unless_forced(self, tmp_path):
        out = tmp_path / "s"
        generate_sample_logs(out, image_size=(36, 64), nuscenes_scenes=1)
        marker = out / "nuscenes" / NUSCENES_VERSION / "scene.json"
        marker.write_text("[]")
        generate_sample_logs(out, image_size=(36, 64), nuscenes_scenes=1)
        assert marker.read_text() == "[]"
        generate_sample_logs(out, image_size=(36, 64), force=True, nuscenes_scenes=1)
        assert marker.read_text() != "[]"

    def test_existing_output_from_other_arguments_is_refused(self, tmp_path):
        out = tmp_path / "s"
        generate_sample_logs(out, image_size=(36, 64), seed=1, nuscenes_scenes=1)
        with pytest.raises(StoreError, match="--force"):
            generate_sample_logs(out, image_size=(36, 64), seed=2, nuscenes_scenes=1)
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("mine")
        with pytest.raises(StoreError, match="not written by drivegen.data.sample_data"):
            generate_sample_logs(tmp_path / "other", image_size=(36, 64), nuscenes_scenes=1)

    def test_too_small_image_size_is_rejected(self, tmp_path):
        with pytest.raises(DrivegenError, match="image_size"):
            generate_sample_logs(tmp_path / "x", image_size=(4, 8), nuscenes_scenes=1)


class TestSampleDrive:
    """The default sample is a drive of several nuScenes scenes (one dataroot each, continuing where
    the last one ended) plus a Waymo segment, so a store of it has a held-out val scene."""

    def test_default_sample_has_scenes_for_a_val_split(self, tmp_path):
        from drivegen.data.ingest import discover_logs
        from drivegen.data.preprocess import SplitConfig
        from drivegen.data.sample_data import NUSCENES_SCENES, SAMPLE_VAL_LOGS

        logs = generate_sample_logs(tmp_path / "s", image_size=(32, 48))
        refs = discover_logs(logs.root)
        assert refs == [log.ref for log in logs.logs]
        nus = [r.name for r in refs if r.kind == "nuscenes"]
        assert len(nus) == NUSCENES_SCENES >= 3
        split = SplitConfig(val_logs=list(SAMPLE_VAL_LOGS))
        sides = {r.name: split.split_of(r.name) for r in refs}
        assert sum(sides[n] == "train" for n in nus) >= 2 and sum(sides[n] == "val" for n in nus) >= 1
        # consecutive scenes: the next one starts after the last frame of the one before
        t = [log.scene.frames[0].timestamp_us for log in (logs.nuscenes, *logs.more_nuscenes)]
        ends = [log.scene.frames[-1].timestamp_us for log in (logs.nuscenes, *logs.more_nuscenes)]
        assert all(b > e for b, e in zip(t[1:], ends[:-1]))

    def test_val_fraction_split_is_stable_and_proportional(self):
        from drivegen.data.preprocess import SplitConfig

        names = [f"scene-{i:04d}" for i in range(400)]
        split = SplitConfig(val_fraction=0.25)
        first = [split.split_of(n) for n in names]
        assert first == [SplitConfig(val_fraction=0.25).split_of(n) for n in names]  # no per-process salt
        assert 0.18 < first.count("val") / len(names) < 0.32
        assert all(SplitConfig(val_fraction=0.0).split_of(n) == "train" for n in names)
