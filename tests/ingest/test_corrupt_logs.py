"""Broken inputs give a LogError that names the log, the file and what to do, never garbage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from drivegen.errors import LogError
from drivegen.data.ingest import LogRef, open_log
from drivegen.data.ingest.tfrecord import encode_record, iter_records, masked_crc32c, read_record_at, write_records
from drivegen.data.sample_data import NUSCENES_LOCATION


@pytest.fixture
def nuscenes_copy(sample, tmp_path) -> LogRef:
    root = tmp_path / "nuscenes"
    shutil.copytree(sample.nuscenes.ref.path, root)
    return LogRef(kind="nuscenes", path=str(root), name=sample.nuscenes.ref.name, version=sample.nuscenes.ref.version)


@pytest.fixture
def waymo_copy(sample, tmp_path) -> Path:
    path = tmp_path / Path(sample.waymo.ref.path).name
    shutil.copyfile(sample.waymo.ref.path, path)
    return path


def _waymo_ref(path: Path) -> LogRef:
    return LogRef(kind="waymo", path=str(path), name=path.stem)


class TestTFRecord:
    """Records round-trip; both CRCs are checked."""

    def test_round_trip_with_offsets(self, tmp_path):
        path = tmp_path / "x.tfrecord"
        payloads = [b"", b"abc", bytes(range(256)) * 10]
        with open(path, "wb") as fh:
            write_records(fh, payloads)
        got = list(iter_records(path))
        assert [p for _, p in got] == payloads
        assert [read_record_at(path, off) for off, _ in got] == payloads
        assert len(encode_record(b"abc")) == 8 + 4 + 3 + 4

    def test_masked_crc_matches_tensorflow_definition(self):
        import crc32c

        crc = crc32c.crc32c(b"drivegen")
        assert masked_crc32c(b"drivegen") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TestCorruptWaymo:
    def test_flipped_byte_is_a_crc_error_with_offset(self, waymo_copy):
        data = bytearray(waymo_copy.read_bytes())
        offsets = [off for off, _ in iter_records(waymo_copy)]
        at = offsets[3] + 100  # inside the payload of record 3
        data[at] ^= 0x40
        waymo_copy.write_bytes(bytes(data))
        with pytest.raises(LogError, match=rf"data CRC mismatch .* byte offset {offsets[3]}") as exc:
            open_log(_waymo_ref(waymo_copy))
        assert str(waymo_copy) in exc.value.reason and exc.value.log == waymo_copy.stem

    def test_truncated_file_is_reported(self, waymo_copy):
        data = waymo_copy.read_bytes()
        waymo_copy.write_bytes(data[: len(data) - 5000])
        with pytest.raises(LogError, match="truncated record at byte offset"):
            open_log(_waymo_ref(waymo_copy))

    def test_segment_without_images_is_conditions_only(self, waymo_copy, sample):
        from waymo_open_dataset import dataset_pb2

        frames = []
        for _, payload in iter_records(waymo_copy):
            f = dataset_pb2.Frame()
            f.ParseFromString(payload)
            del f.images[:]
            frames.append(f.SerializeToString())
        with open(waymo_copy, "wb") as fh:
            write_records(fh, frames)
        reader = open_log(_waymo_ref(waymo_copy))
        assert not reader.has_images
        assert len(reader.scene.frames) == len(sample.waymo.scene.frames) and len(reader.scene.cameras) == 5
        with pytest.raises(LogError, match="no camera images"):
            reader.image("FRONT", 0)

    def test_unknown_camera_and_frame_raise(self, sample):
        reader = open_log(sample.waymo.ref)
        with pytest.raises(LogError, match="camera 'REAR' is not in this segment"):
            reader.image("REAR", 0)
        with pytest.raises(LogError, match="outside"):
            reader.image("FRONT", 10_000)

    def test_not_a_waymo_file(self, tmp_path):
        path = tmp_path / "junk.tfrecord"
        with open(path, "wb") as fh:
            write_records(fh, [b"\xff\xff\xff\xff not a proto"])
        with pytest.raises(LogError, match="not a Waymo Frame"):
            open_log(_waymo_ref(path))


class TestCorruptNuScenes:
    def test_missing_table_is_named(self, nuscenes_copy):
        (Path(nuscenes_copy.path) / nuscenes_copy.version / "sample_annotation.json").unlink()
        with pytest.raises(LogError, match=r"sample_annotation\.json missing") as exc:
            open_log(nuscenes_copy)
        assert exc.value.log == nuscenes_copy.name

    def test_truncated_jpeg_raises_on_access(self, nuscenes_copy):
        reader = open_log(nuscenes_copy)
        path = Path(nuscenes_copy.path) / reader._files["CAM_FRONT"][2]
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert reader.image("CAM_FRONT", 1).shape[2] == 3  # other images still fine
        with pytest.raises(LogError, match="truncated JPEG"):
            reader.image("CAM_FRONT", 2)

    def test_missing_image_file_raises(self, nuscenes_copy):
        reader = open_log(nuscenes_copy)
        (Path(nuscenes_copy.path) / reader._files["CAM_BACK"][0]).unlink()
        with pytest.raises(LogError, match="cannot be read"):
            reader.image("CAM_BACK", 0)

    def test_unknown_camera_raises(self, sample):
        reader = open_log(sample.nuscenes.ref)
        with pytest.raises(LogError, match="camera 'FRONT' is not in this scene"):
            reader.image("FRONT", 0)

    def test_unknown_scene_lists_the_scenes(self, sample):
        ref = LogRef("nuscenes", sample.nuscenes.ref.path, "scene-9999", sample.nuscenes.ref.version)
        with pytest.raises(LogError, match="scene-drivegen-0001"):
            open_log(ref)

    def test_missing_map_expansion_is_a_log_without_map(self, nuscenes_copy):
        (Path(nuscenes_copy.path) / "maps" / "expansion" / f"{NUSCENES_LOCATION}.json").unlink()
        reader = open_log(nuscenes_copy)
        assert reader.scene.map_elements == ()
        assert not reader.dropped.has_map and "map-expansion" in reader.dropped.no_map

    def test_missing_image_file_is_counted(self, nuscenes_copy):
        reader = open_log(nuscenes_copy)
        (Path(nuscenes_copy.path) / reader._files["CAM_BACK"][0]).unlink()
        assert open_log(nuscenes_copy).dropped.summary()["cameras_without_images"] == {"CAM_BACK": 1}

    def test_outdated_map_version_raises(self, nuscenes_copy):
        import json

        path = Path(nuscenes_copy.path) / "maps" / "expansion" / f"{NUSCENES_LOCATION}.json"
        obj = json.loads(path.read_text())
        obj["version"] = "1.0"
        path.write_text(json.dumps(obj))
        with pytest.raises(LogError, match="v1.3"):
            open_log(nuscenes_copy)
