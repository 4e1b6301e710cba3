"""Atomic writes: every artefact appears under its name complete, or not at all.

One module for the whole project (chopgrad_core's heads and drivegen's stages alike): a file is
written to a unique temporary sibling (same folder, so the final ``os.replace`` is a rename on one
file system, atomic on POSIX) and renamed into place; on any failure the temporary is removed and
the error re-raised, so a crash, a kill or a full disk never leaves a truncated file under the
real name. Folders are built the same way (``atomic_dir``): a half-written checkpoint folder is
never mistaken for a finished one.

    with atomic_path("out/video.mp4") as tmp:   # any writer that takes a path
        write_video(tmp, frames)
    write_json("out/report.json", report)
    with atomic_dir("out/checkpoint-000100") as tmp:
        save_safetensors(state, tmp / "model.safetensors")

What was written can be checked later with ``file_digest`` (BLAKE2b-128 of a file, read in 1 MiB
blocks): store manifests, checkpoint manifests and evaluation cache keys all use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_path", "check_writable", "file_digest", "hash_file", "save_safetensors",
           "write_bytes", "write_json", "write_png", "write_text"]


def hash_file(path: str | os.PathLike, h: Any = None) -> Any:
    """Feed a file's bytes to the hashlib object ``h`` (default: a new BLAKE2b-128) in 1 MiB blocks;
    returns ``h``. BLAKE2b because it is the fastest strong hash in hashlib on 64-bit CPUs."""
    h = hashlib.blake2b(digest_size=16) if h is None else h
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b-128 hex digest of a file (what manifests record)."""
    return hash_file(path).hexdigest()


def _temp_sibling(path: Path) -> Path:
    # The suffix is kept last so that writers which pick a format from the name (imageio, ffmpeg)
    # still see ".mp4" / ".png"; the leading dot hides it from globbing readers.
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; renamed onto ``path`` when the block ends
    without an error, removed otherwise."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder that replaces the folder ``path`` when the block ends without an error.

    An existing ``path`` is moved aside first and removed only after the new one is in place; the
    moment between the two renames is the only one in which ``path`` is missing, and the old copy
    then still exists under a ``.<name>.<id>.old`` sibling (readers that need the newest complete
    folder look for it: ``drivegen.model.checkpoint`` does)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """JSON (keys in insertion order; non-JSON values such as Paths written with ``str``)."""
    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def save_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` through a temporary file (tensors made contiguous on the CPU)."""
    import safetensors.torch

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(state, str(tmp), metadata=dict(metadata) if metadata else None)
    return Path(path)


def write_png(path: str | os.PathLike, image_HW3: Any) -> Path:
    """An (H, W, 3) or (H, W) uint8 image as PNG."""
    import imageio.v2 as imageio

    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, image_HW3, format="png")
    return Path(path)


def check_writable(folder: str | os.PathLike, key: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any long work
    starts; otherwise an ``OutputNotWritableError`` naming the config ``key``."""
    from chopgrad_core.errors import OutputNotWritableError

    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritableError(f"{key}={str(folder)!r} is not writable ({exc.strerror or exc}); point {key} at "
                                     "a folder you can write to, or fix its permissions") from None
    return path
