"""The clip store: a Zarr v3 hierarchy of fixed-length multi-camera clips, written atomically.

Layout (all under one directory, `PreprocessConfig.out`; `datasets/README.md` has the full table):

    <out>/zarr.json                 root group; attrs["drivegen"] = {"format", "settings"}
    <out>/clips/<clip_id>/          one group per finished clip; attrs: log, dataset, start_frame, ...
    <out>/clips/<clip_id>/<array>   arrays of ARRAYS (T frames, K cameras), sharded: one shard per array
    <out>/report.json               what the last preprocessing run did, per log (atomic write)
    <out>/_partial/                 clips being written (temp names); never read, removed after a run

Why one group per clip: a clip is written by exactly one Ray actor, so each shard has one writer
(Zarr v3 loses data when several processes write chunks of one shard), and the clip becomes
visible in one step: its group is written under `_partial/<clip_id>.<unique>` and then renamed
into `clips/` (rename of a directory is atomic on a local filesystem). A clip is therefore either
absent or complete; rerunning skips the clips present, and a crash leaves only temp directories.
Metadata is consolidated into the root zarr.json at the end of a run so that readers open the
whole store with one read.

Shape legend: T frames, K cameras, H W image size, C layout channels, S box slots, P box
parameters, h w Plücker ray map size, Cb Hb Wb BEV channels and size.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from drivegen.errors import StoreError

__all__ = [
    "ARRAYS",
    "ArraySpec",
    "FORMAT",
    "clip_id",
    "completed_clips",
    "consolidate",
    "has_clip",
    "open_store",
    "read_report",
    "remove_partial",
    "write_clip",
    "write_report",
]

FORMAT = "drivegen-clips/1"
CLIPS = "clips"
PARTIAL = "_partial"
REPORT = "report.json"


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One per-clip array: dimension names, dtype, whether it is sharded per (frame, camera)."""

    dims: str
    dtype: str
    doc: str
    per_image: bool = False
    """Chunk per frame (and camera) inside one shard per clip: lets a reader fetch a subset of
    frames and cameras; small arrays are one chunk."""


# Every array a clip may hold. `images` is absent from conditions-only clips (attrs has_images
# False) and `bev` from stores written with conditions.bev = false.
ARRAYS: dict[str, ArraySpec] = {
    "images": ArraySpec("T K H W 3", "uint8", "RGB camera images, resized to the store's image_size", True),
    "layout": ArraySpec("T K C H W", "uint8", "semantic layout raster (conditions.layout.LAYOUT_CHANNELS)", True),
    "control": ArraySpec("T K H W 3", "uint8", "RGB control image (conditions.layout)", True),
    "box_corners": ArraySpec("T K S 8 2", "float32", "projected box corners, image spans [0, 1]"),
    "box_corner_mask": ArraySpec("T K S 8", "bool", "corner in front of the near plane"),
    "box_params": ArraySpec("T K S P", "float32", "3D box parameters in the ego frame (box_param_names)"),
    "box_class": ArraySpec("T K S", "int64", "index in conditions.BOX_CLASSES, -1 padding"),
    "box_track": ArraySpec("T K S", "int64", "track id, -1 padding"),
    "box_mask": ArraySpec("T K S", "bool", "slot holds a box in this camera's view"),
    "box_visible_px": ArraySpec("T K S", "int64", "pixels showing the box after occlusion"),
    "num_boxes_dropped": ArraySpec("T K", "int64", "boxes in view beyond max_boxes"),
    "intrinsics": ArraySpec("T K 3 3", "float32", "K at the store's image_size, pixels"),
    "cam_to_ego": ArraySpec("T K 4 4", "float32", "camera -> ego rigid transform, metres"),
    "plucker": ArraySpec("T K 6 h w", "float32", "Plücker rays (direction, moment) in the ego frame", True),
    "ego_to_world": ArraySpec("T 4 4", "float64", "ego -> world pose, metres"),
    "timestamp_us": ArraySpec("T", "int64", "frame timestamps, microseconds"),
    "frame_index": ArraySpec("T", "int64", "index of each frame in its log"),
    "bev": ArraySpec("T Cb Hb Wb", "uint8", "BEV raster around the ego (conditions.bev.BEV_CHANNELS)", True),
}


def clip_id(log_name: str, start_frame: int) -> str:
    """`<log>__<start:06d>`, with characters that are not safe in a path replaced by '_'."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in log_name).lstrip(".") or "log"
    return f"{safe}__{start_frame:06d}"


def open_store(path: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Create the store (root and `clips` groups) or check that an existing one has `settings`.

    Called by the driver before any worker starts, so that workers only add clip groups.
    """
    path = Path(path)
    settings = json.loads(json.dumps(dict(settings)))  # normalise tuples -> lists, as stored
    if (path / "zarr.json").exists():
        root = zarr.open_group(path, mode="r", use_consolidated=False)
        meta = root.attrs.get("drivegen")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise StoreError(
                f"{str(path)!r} is a Zarr group but not a drivegen clip store (format {FORMAT!r}); "
                f"set out= to a new path"
            )
        if meta.get("settings") != settings:
            old = meta.get("settings") or {}
            diff = {k: (old.get(k), settings.get(k)) for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)}
            raise StoreError(
                f"store {str(path)!r} was written with other settings (stored, requested): {diff}; "
                f"clips of one store must agree: set out= to a new path, or delete the store to rebuild it"
            )
    else:
        path.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(path, mode="w")
        root.attrs["drivegen"] = {"format": FORMAT, "settings": settings}
    if not (path / CLIPS / "zarr.json").exists():
        zarr.open_group(path, mode="r+", use_consolidated=False).require_group(CLIPS)


def completed_clips(path: str | os.PathLike) -> set[str]:
    """Ids of the clips present in the store (a present clip is complete: see the module doc)."""
    clips = Path(path) / CLIPS
    if not clips.is_dir():
        return set()
    return {p.name for p in clips.iterdir() if (p / "zarr.json").is_file()}


def has_clip(path: str | os.PathLike, clip: str) -> bool:
    """Whether clip `clip` is in the store (complete)."""
    return (Path(path) / CLIPS / clip / "zarr.json").is_file()


def _codec(compression: Mapping[str, Any]) -> BloscCodec:
    shuffle = "bitshuffle" if compression.get("bitshuffle", True) else "shuffle"
    return BloscCodec(cname=compression["cname"], clevel=int(compression["level"]), shuffle=shuffle)


def write_clip(
    path: str | os.PathLike,
    clip: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    compression: Mapping[str, Any],
) -> bool:
    """Write one clip group atomically; False (and nothing written) if the clip already exists.

    Idempotent, so that a Ray task retried after its worker died can run again: each attempt
    writes its own temp directory, and only one rename into `clips/` can win.
    """
    root = Path(path)
    final = root / CLIPS / clip
    if (final / "zarr.json").exists():
        return False
    unknown = set(arrays) - set(ARRAYS)
    assert not unknown, f"arrays {sorted(unknown)} are not declared in store.ARRAYS"
    temp = root / PARTIAL / f"{clip}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    temp.mkdir(parents=True)
    try:
        group = zarr.open_group(temp, mode="w")
        group.attrs.update(dict(attrs))
        codec = _codec(compression)
        for name, data in arrays.items():
            spec = ARRAYS[name]
            assert data.dtype == np.dtype(spec.dtype) and data.ndim == len(spec.dims.split()), (name, data.dtype, data.shape)
            lead = 2 if spec.dims.startswith("T K") else 1
            if spec.per_image:
                chunks = (1,) * lead + data.shape[lead:]
                shards = data.shape
            else:
                chunks, shards = data.shape, None
            array = group.create_array(
                name,
                shape=data.shape,
                dtype=data.dtype,
                chunks=chunks,
                shards=shards,
                compressors=codec,
                dimension_names=spec.dims.split(),
                # Skip zarr's per-chunk "all fill value?" check: it costs more than compressing.
                config={"write_empty_chunks": True},
            )
            array[...] = data
        try:
            os.rename(temp, final)
        except OSError:
            # Another attempt of the same clip got there first (non-empty target directory).
            if (final / "zarr.json").exists():
                return False
            raise
        return True
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def consolidated_clips(path: str | os.PathLike) -> set[str] | None:
    """Clip ids listed in the root's consolidated metadata (None: not consolidated)."""
    meta = json.loads((Path(path) / "zarr.json").read_text()).get("consolidated_metadata")
    if not meta:
        return None
    prefix = CLIPS + "/"
    return {k[len(prefix):] for k in meta.get("metadata", {}) if k.startswith(prefix) and "/" not in k[len(prefix):]}


def remove_partial(path: str | os.PathLike) -> None:
    """Delete temp directories of clips that never finished (a crashed worker's leftovers)."""
    shutil.rmtree(Path(path) / PARTIAL, ignore_errors=True)


def consolidate(path: str | os.PathLike) -> None:
    """Consolidate all metadata into the root zarr.json (readers then list clips in one read).

    Skipped when the consolidated metadata already lists exactly the clips present, so that a
    rerun that adds no clip rewrites nothing but report.json.
    """
    remove_partial(path)
    if consolidated_clips(path) == completed_clips(path):
        return
    with warnings.catch_warnings():
        # report.json is not a Zarr node, and consolidated metadata is a zarr-python extension
        # of v3: both warn on every call and neither is a problem here.
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write a JSON file atomically (temp file beside it, then rename): readers see old or new."""
    final = Path(path)
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        temp.write_text(json.dumps(obj, indent=2, default=str))
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def write_report(path: str | os.PathLike, report: Mapping[str, Any]) -> None:
    """Write report.json atomically (temp file, then rename)."""
    write_json_atomic(Path(path) / REPORT, report)


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """The report of the last run; StoreError if the store has none."""
    file = Path(path) / REPORT
    if not file.is_file():
        raise StoreError(f"{str(file)!r} does not exist; run `python -m drivegen.preprocess out={path}` first")
    return json.loads(file.read_text())
