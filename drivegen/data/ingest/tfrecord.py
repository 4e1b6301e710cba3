"""TFRecord framing without TensorFlow: write and read records with their masked CRC32C checks.

Each record is (little-endian):

    uint64 length | uint32 masked_crc32c(length bytes) | payload[length] | uint32 masked_crc32c(payload)

with masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8 mod 2**32 (TensorFlow's
`tensorflow/core/lib/hash/crc32c.h`). Both CRCs are checked on read: a flipped byte or a cut-off
file raises `LogError` naming the file and the byte offset of the bad record, so a corrupt download
is caught at ingestion rather than as a protobuf decode error three layers down.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Iterator

import crc32c

from drivegen.errors import LogError

__all__ = ["masked_crc32c", "encode_record", "write_records", "iter_records", "read_record_at"]

_HEADER = struct.Struct("<QI")  # length, masked crc of the 8 length bytes
_FOOTER = struct.Struct("<I")  # masked crc of the payload
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + _FOOTER.pack(masked_crc32c(payload))


def write_records(fh: BinaryIO, payloads) -> None:
    for payload in payloads:
        fh.write(encode_record(payload))


def _read_one(fh: BinaryIO, path: str, offset: int, log: str) -> bytes | None:
    """The payload of the record at `offset` (fh positioned there), or None at a clean end of file."""
    header = fh.read(_HEADER.size)
    if not header:
        return None
    fix = "re-download or re-copy the file (it is truncated or corrupt)"
    if len(header) < _HEADER.size:
        raise LogError(log, f"{path!r}: truncated record header at byte offset {offset} "
                            f"({len(header)} of {_HEADER.size} bytes); {fix}")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise LogError(log, f"{path!r}: length CRC mismatch in the record at byte offset {offset}; {fix}")
    payload = fh.read(length)
    footer = fh.read(_FOOTER.size)
    if len(payload) < length or len(footer) < _FOOTER.size:
        raise LogError(log, f"{path!r}: truncated record at byte offset {offset} (declares {length} payload "
                            f"bytes, file ends first); {fix}")
    if masked_crc32c(payload) != _FOOTER.unpack(footer)[0]:
        raise LogError(log, f"{path!r}: data CRC mismatch in the record at byte offset {offset}; {fix}")
    return payload


def iter_records(path: str | Path, log: str | None = None) -> Iterator[tuple[int, bytes]]:
    """(byte offset, payload) of every record in the file, CRC-checked."""
    path = str(path)
    log = path if log is None else log
    with open(path, "rb") as fh:
        offset = 0
        while (payload := _read_one(fh, path, offset, log)) is not None:
            yield offset, payload
            offset = fh.tell()


def read_record_at(path: str | Path, offset: int, log: str | None = None) -> bytes:
    """The CRC-checked payload of the one record starting at `offset` (from `iter_records`)."""
    path = str(path)
    log = path if log is None else log
    with open(path, "rb") as fh:
        fh.seek(offset)
        payload = _read_one(fh, path, offset, log)
    if payload is None:
        raise LogError(log, f"{path!r}: no record at byte offset {offset} (file ends there); the file changed "
                            f"since it was opened: open the log again")
    return payload
