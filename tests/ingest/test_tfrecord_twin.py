"""drivegen's hand-written TFRecord framing against an independent implementation.

The reference is the `tfrecord` PyPI package (pinned in the dev extra; no TensorFlow): its
`TFRecordWriter` writes files our reader must read, its iterator and index tool must read the files
our writer writes, and the CRC32C under our mask is checked against published test vectors
(RFC 3720 appendix B.4 and the CRC-32C check value of "123456789"), recovered from our public
`masked_crc32c` by inverting the mask so whatever CRC library the module uses is what is tested.
"""

from __future__ import annotations

import importlib
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from tfrecord import example_pb2
from tfrecord.reader import tfrecord_iterator
from tfrecord.tools.tfrecord2idx import create_index
from tfrecord.writer import TFRecordWriter

from drivegen.errors import LogError


def _import_ours():
    """The module under test: its new home first, then the pre-restructure path."""
    for name in ("drivegen.data.ingest.tfrecord", "drivegen.ingest.tfrecord"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise  # the module exists but one of its own imports is missing
    raise ModuleNotFoundError("neither drivegen.data.ingest.tfrecord nor drivegen.ingest.tfrecord")


ours = _import_ours()

_MASK_DELTA = 0xA282EAD8  # TensorFlow's kMaskDelta (tensorflow/core/lib/hash/crc32c.h)


def _unmask(masked: int) -> int:
    """Inverse of TensorFlow's mask: rotate right by 15 plus kMaskDelta."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot << 15) | (rot >> 17)) & 0xFFFFFFFF


def _examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({
            "name": (f"frame-{i}".encode(), "byte"),
            "image": (rng.randbytes(rng.choice([0, 1, 17, 5000, 70_000])), "byte"),
            "timestamp": ([1_600_000_000_000_000 + i, -i], "int"),
            "box": (np.float32([rng.uniform(-50, 50) for _ in range(7)]), "float"),
        })
    return out


@pytest.fixture
def foreign_file(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A file written entirely by the tfrecord package."""
    path, data = tmp_path / "foreign.tfrecord", _examples(6)
    writer = TFRecordWriter(str(path))
    for datum in data:
        writer.write(datum)
    writer.close()
    return path, data


def _as_example(payload: bytes) -> example_pb2.Example:
    example = example_pb2.Example()
    example.ParseFromString(payload)
    return example


class TestOursReadsForeignRecords:
    """Records written by tfrecord's TFRecordWriter come back from iter_records / read_record_at
    unchanged, in order, at the byte offsets tfrecord's own index tool reports."""

    def test_foreign_examples_read_back_equal_payloads(self, foreign_file) -> None:
        path, data = foreign_file
        records = list(ours.iter_records(path))
        assert len(records) == len(data)
        for (_, payload), datum in zip(records, data):
            expected = _as_example(TFRecordWriter.serialize_tf_example(datum))
            assert _as_example(payload) == expected

    def test_foreign_offsets_match_foreign_index_and_read_at(self, foreign_file, tmp_path: Path) -> None:
        path, _ = foreign_file
        create_index(str(path), str(tmp_path / "foreign.index"))
        index = [tuple(map(int, line.split())) for line in (tmp_path / "foreign.index").read_text().splitlines()]
        records = list(ours.iter_records(path))
        assert [offset for offset, _ in records] == [start for start, _ in index]
        for (offset, payload), (_, length) in zip(records, index):
            assert length == len(payload) + 16  # 8 length + 4 crc + payload + 4 crc
            assert ours.read_record_at(path, offset) == payload

    def test_foreign_file_rewritten_by_ours_is_byte_identical(self, foreign_file, tmp_path: Path) -> None:
        path, _ = foreign_file
        copy = tmp_path / "ours.tfrecord"
        with open(copy, "wb") as fh:
            ours.write_records(fh, (payload for _, payload in ours.iter_records(path)))
        assert copy.read_bytes() == path.read_bytes()

    def test_flipped_payload_byte_in_foreign_file_raises_log_error(self, foreign_file) -> None:
        path, _ = foreign_file
        raw = bytearray(path.read_bytes())
        raw[12 + 3] ^= 0x01  # a byte inside the first record's payload
        path.write_bytes(bytes(raw))
        with pytest.raises(LogError, match="data CRC mismatch.*byte offset 0"):
            list(ours.iter_records(path))


class TestForeignReadsOurRecords:
    """Files written by write_records are read by tfrecord's iterator and Example loader with the
    same payloads; our masked CRC equals TFRecordWriter.masked_crc byte for byte."""

    def test_our_records_read_by_foreign_iterator_equal_payloads(self, tmp_path: Path) -> None:
        rng = random.Random(1)
        payloads = [b"", b"\x00", rng.randbytes(255), rng.randbytes(70_000)]
        payloads += [TFRecordWriter.serialize_tf_example(d) for d in _examples(3, seed=2)]
        path = tmp_path / "ours.tfrecord"
        with open(path, "wb") as fh:
            ours.write_records(fh, payloads)
        assert [bytes(r) for r in tfrecord_iterator(str(path))] == payloads

    def test_our_examples_parsed_by_foreign_loader_equal_values(self, tmp_path: Path) -> None:
        from tfrecord.reader import tfrecord_loader

        data = _examples(4, seed=3)
        path = tmp_path / "ours.tfrecord"
        with open(path, "wb") as fh:
            ours.write_records(fh, (TFRecordWriter.serialize_tf_example(d) for d in data))
        loaded = list(tfrecord_loader(str(path), None, {"name": "byte", "timestamp": "int", "box": "float"}))
        assert len(loaded) == len(data)
        for got, datum in zip(loaded, data):
            assert bytes(got["name"]) == datum["name"][0]
            assert got["timestamp"].tolist() == datum["timestamp"][0]
            np.testing.assert_array_equal(got["box"], datum["box"][0])

    @pytest.mark.parametrize("size", [0, 1, 8, 31, 32, 33, 1000, 65_537])
    def test_masked_crc_of_random_bytes_equals_foreign_masked_crc(self, size: int) -> None:
        data = random.Random(size).randbytes(size)
        assert struct.pack("<I", ours.masked_crc32c(data)) == TFRecordWriter.masked_crc(data)


class TestCRC32CTestVectors:
    """The CRC inside masked_crc32c is CRC-32C (Castagnoli): unmasking our value gives the
    published check values, and an empty input gives exactly the mask delta."""

    @pytest.mark.parametrize(
        ("data", "crc"),
        [
            (bytes(32), 0x8A9136AA),  # RFC 3720 B.4: 32 bytes of zeros
            (b"\xff" * 32, 0x62A8AB43),  # RFC 3720 B.4: 32 bytes of 0xFF
            (bytes(range(32)), 0x46DD794E),  # RFC 3720 B.4: incrementing 0x00..0x1F
            (bytes(range(31, -1, -1)), 0x113FDB5C),  # RFC 3720 B.4: decrementing 0x1F..0x00
            (b"123456789", 0xE3069283),  # CRC-32C check value (CRC catalogue)
        ],
        ids=["zeros", "ones", "ascending", "descending", "check-123456789"],
    )
    def test_published_vector_unmasks_to_published_crc(self, data: bytes, crc: int) -> None:
        assert _unmask(ours.masked_crc32c(data)) == crc

    def test_empty_input_masks_to_delta(self) -> None:
        assert ours.masked_crc32c(b"") == _MASK_DELTA
