"""The clip store: a Zarr v3 hierarchy of fixed-length multi-camera clips, written atomically.

Layout (all under one directory, `PreprocessConfig.out`; `datasets/README.md` has the full table):

    <out>/zarr.json                 root group; attrs["drivegen"] = {"format", "settings"}; consolidated metadata
    <out>/clips/<clip_id>/          one group per finished clip; attrs: log, dataset, start_frame, ...
    <out>/clips/<clip_id>/<array>   arrays of ARRAYS (T frames, K cameras), sharded: one shard per array
    <out>/clips/<clip_id>/manifest.json   every file of the clip with its size and BLAKE2b checksum
    <out>/report.json               what the last preprocessing run did, per log (atomic write)
    <out>/verify.json               broken clips found by `verify=true` (rewritten, then removed, by the next run)
    <out>/_partial/<write id>/      one clip being written; removed when done, or when its writer is dead
    <out>/_locks/                   the writers' lock files and the store's metadata lock

Why one group per clip: a clip is written by exactly one Ray actor, so each shard has one writer
(Zarr v3 loses data when several processes write chunks of one shard), and the clip becomes
visible in one step: its group is written under `_partial/`, checked complete (every array's
chunk/shard files present, `manifest.json` written last) and then renamed into `clips/` (rename of
a directory is atomic on a local filesystem). A clip is therefore absent or complete; rerunning
skips the clips present, and a crash leaves only temp directories.

Several runs into one store (e.g. a nuScenes root and a Waymo root preprocessed side by side) are
safe. We chose per-write partial folders over one lock for the whole store, so that such runs
proceed together instead of the second being refused: each clip write owns its folder
`_partial/<write id>/` and holds an exclusive `flock` on `_locks/<write id>` while it writes. The
kernel drops that lock when the writer dies (a kill, an OOM, a lost Ray actor), so a run cleaning
up leftovers (`remove_stale_partial`) deletes exactly the folders whose lock it can take: the dead
writers', never a live one's. A pid check could not tell that across hosts or after pid reuse.
The few operations on shared metadata (creating the root, removing broken clips, consolidating)
hold the short store lock `_locks/store.lock`.

Integrity: a missing chunk or shard file reads as zeros in Zarr (the fill value), silently. So
each clip carries a manifest; readers (`ClipDataset`) check it cheaply on every access (each file
present with its size: `check_clip`), `verify_store` (``python -m drivegen.preprocess verify=true``)
checks every checksum, and the next preprocessing run removes the clips either check found broken
(`repair`) and writes them again.

Metadata is consolidated into the root zarr.json at the end of a run so that readers open the
whole store with one read; a store without it (a first run that was killed) is refused with the
fix (`open_root`).

Shape legend: T frames, K cameras, H W image size, C layout channels, S box slots, P box
parameters, h w Plücker ray map size, Cb Hb Wb BEV channels and size.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import itertools
import json
import math
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from chopgrad_core.atomic import file_digest, write_json
from drivegen.errors import StoreError

__all__ = [
    "ARRAYS",
    "ArraySpec",
    "FORMAT",
    "check_clip",
    "clip_id",
    "completed_clips",
    "consolidate",
    "consolidated_clips",
    "has_clip",
    "open_root",
    "open_store",
    "read_manifest",
    "remove_stale_partial",
    "repair",
    "store_lock",
    "verify_store",
    "write_clip",
    "write_report",
]

FORMAT = "drivegen-clips/1"
CLIPS = "clips"
PARTIAL = "_partial"
LOCKS = "_locks"
REPORT = "report.json"
VERIFY = "verify.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "drivegen-clip-manifest/1"


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


# ----------------------------------------------------------------------------------------------
# Locks: the store's metadata lock and one lock per clip write (see the module doc)
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _flock(path: Path, blocking: bool) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block; yields False
    (nothing held) when ``blocking`` is off and someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def store_lock(path: str | os.PathLike) -> Iterator[None]:
    """The store's metadata lock: creating the root, removing broken clips and consolidating
    hold it (each briefly), so that concurrent runs never interleave those steps."""
    with _flock(Path(path) / LOCKS / "store.lock", blocking=True):
        yield


@contextlib.contextmanager
def _write_slot(root: Path, clip: str) -> Iterator[Path]:
    """A fresh `_partial/<write id>/` folder, owned through the flock on `_locks/<write id>` for
    the whole block; both are removed at the end, whatever ends it."""
    write_id = f"{clip}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    lock = root / LOCKS / write_id
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    folder = root / PARTIAL / write_id
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode())
        # The lock exists (and is held) before the folder does: a cleanup that sees the folder
        # also sees the lock, so it can never take a live folder for a dead writer's.
        folder.mkdir(parents=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def remove_stale_partial(path: str | os.PathLike) -> list[str]:
    """Delete the `_partial/` folders of writers that are dead (their flock is free) and their
    lock files; folders of live writers, from this run or any other, are left alone. Returns the
    names removed."""
    root = Path(path)
    removed = []
    partial, locks = root / PARTIAL, root / LOCKS
    names = {p.name for p in partial.iterdir()} if partial.is_dir() else set()
    names |= {p.name for p in locks.iterdir() if p.name != "store.lock"} if locks.is_dir() else set()
    for name in sorted(names):
        lock = locks / name
        if lock.exists():
            with _flock(lock, blocking=False) as free:
                if not free:
                    continue  # a live writer
                shutil.rmtree(partial / name, ignore_errors=True)
                with contextlib.suppress(OSError):
                    lock.unlink()
        else:  # no lock: its writer finished or died after removing it (the lock goes last)
            shutil.rmtree(partial / name, ignore_errors=True)
        removed.append(name)
    return removed


# ----------------------------------------------------------------------------------------------
# Creating, writing and listing clips
# ----------------------------------------------------------------------------------------------


def open_store(path: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Create the store (root and `clips` groups) or check that an existing one has `settings`.

    Called by the driver before any worker starts, so that workers only add clip groups. Holds
    the store lock: two runs starting together create the root once.
    """
    path = Path(path)
    settings = json.loads(json.dumps(dict(settings)))  # normalise tuples -> lists, as stored
    path.mkdir(parents=True, exist_ok=True)
    with store_lock(path):
        if (path / "zarr.json").exists():
            root = _zarr_call(path, lambda: zarr.open_group(path, mode="r", use_consolidated=False))
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
            # mode "a", never "w": a root zarr.json lost on its own must not take the clips with it.
            root = zarr.open_group(path, mode="a")
            root.attrs["drivegen"] = {"format": FORMAT, "settings": settings}
        if not (path / CLIPS / "zarr.json").exists():
            zarr.open_group(path, mode="r+", use_consolidated=False).require_group(CLIPS)


def completed_clips(path: str | os.PathLike) -> set[str]:
    """Ids of the clips present in the store: those with a manifest, which is written last (see
    the module doc). Files lost since are found by `check_clip` and `repair`."""
    clips = Path(path) / CLIPS
    if not clips.is_dir():
        return set()
    return {p.name for p in clips.iterdir() if (p / MANIFEST).is_file()}


def has_clip(path: str | os.PathLike, clip: str) -> bool:
    """Whether clip `clip` is in the store (complete)."""
    return (Path(path) / CLIPS / clip / MANIFEST).is_file()


def _codec(compression: Mapping[str, Any]) -> BloscCodec:
    shuffle = "bitshuffle" if compression.get("bitshuffle", True) else "shuffle"
    return BloscCodec(cname=compression["cname"], clevel=int(compression["level"]), shuffle=shuffle)


def _chunk_files(shape: tuple[int, ...], outer: tuple[int, ...]) -> list[str]:
    """The files Zarr v3 writes for an array of `shape` in pieces of `outer` (shard or chunk
    shape; default chunk key encoding 'c/i/j/...'), every piece written (write_empty_chunks)."""
    grid = [range(math.ceil(n / c)) if n else range(0) for n, c in zip(shape, outer)]
    return ["/".join(["c", *map(str, idx)]) for idx in itertools.product(*grid)]


def _manifest(folder: Path, clip: str, expected: Mapping[str, list[str]]) -> dict[str, Any]:
    """Size and checksum of every file of the clip group at `folder`; a StoreError if any file
    that `expected` lists (array -> its chunk/shard files) is missing or empty."""
    files: dict[str, list] = {}
    for rel in ["zarr.json", *(f"{name}/{f}" for name, fs in expected.items() for f in ["zarr.json", *fs])]:
        file = folder / rel
        if not file.is_file() or file.stat().st_size == 0:
            raise StoreError(f"clip {clip!r}: {rel} was not written completely (missing or empty under {str(folder)!r}); "
                             "the clip is not stored: rerun python -m drivegen.preprocess")
        files[rel] = [file.stat().st_size, file_digest(file)]
    return {"format": MANIFEST_FORMAT, "clip": clip, "checksum": "blake2b-128",
            "arrays": {name: ["zarr.json", *fs] for name, fs in expected.items()}, "files": files}


def write_clip(
    path: str | os.PathLike,
    clip: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    compression: Mapping[str, Any],
) -> bool:
    """Write one clip group atomically; False (and nothing written) if the clip already exists.

    Idempotent, so that a Ray task retried after its worker died can run again: each attempt
    writes its own partial folder, and only one rename into `clips/` can win. The clip is checked
    complete (every expected chunk/shard file present) and its manifest written before the rename.
    """
    root = Path(path)
    final = root / CLIPS / clip
    if (final / MANIFEST).exists():
        return False
    unknown = set(arrays) - set(ARRAYS)
    assert not unknown, f"arrays {sorted(unknown)} are not declared in store.ARRAYS"
    with _write_slot(root, clip) as slot:
        temp = slot / clip
        group = zarr.open_group(temp, mode="w")
        group.attrs.update(dict(attrs))
        codec = _codec(compression)
        expected: dict[str, list[str]] = {}
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
                # Skip zarr's per-chunk "all fill value?" check: it costs more than compressing;
                # it also means every chunk has a file, which the manifest relies on.
                config={"write_empty_chunks": True},
            )
            array[...] = data
            expected[name] = _chunk_files(data.shape, shards or chunks)
        # Verified complete, then the manifest last: a clip folder with a manifest is a whole clip.
        write_json(temp / MANIFEST, _manifest(temp, clip, expected), indent=None)
        try:
            os.rename(temp, final)
        except OSError:
            # Another attempt of the same clip got there first (non-empty target directory).
            if (final / MANIFEST).exists():
                return False
            raise StoreError(f"clip {clip!r}: {str(final)!r} exists without a manifest (a broken clip); run "
                             f"python -m drivegen.preprocess out={root} again: it removes and rewrites broken clips") from None
        return True


# ----------------------------------------------------------------------------------------------
# Checking clips: cheap (readers, every run) and full (verify=true); repair
# ----------------------------------------------------------------------------------------------


def _fix(root: Path) -> str:
    return f"run `python -m drivegen.preprocess out={root}` again: it removes and rewrites broken clips"


def read_manifest(path: str | os.PathLike, clip: str) -> dict[str, Any]:
    """Clip `clip`'s manifest; a StoreError naming the clip and the fix if it is missing or damaged."""
    root = Path(path)
    file = root / CLIPS / clip / MANIFEST
    try:
        manifest = json.loads(file.read_text())
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError(f"format {manifest.get('format')!r}")
    except (OSError, ValueError) as exc:
        raise StoreError(f"clip {clip!r} of store {str(root)!r} has no readable {MANIFEST} ({exc.__class__.__name__}: "
                         f"{exc}): it is incomplete or was written before manifests existed; {_fix(root)}") from None
    return manifest


def check_clip(path: str | os.PathLike, clip: str, manifest: Mapping[str, Any] | None = None,
               arrays: Iterator[str] | None = None, full: bool = False) -> None:
    """Raise a StoreError naming the clip, the file and the fix unless every file of the clip (or
    of `arrays` only) is present with its recorded size; `full` also compares the checksums."""
    root = Path(path)
    manifest = manifest or read_manifest(root, clip)
    files = manifest["files"]
    names = list(files) if arrays is None else [f"{a}/{f}" for a in arrays for f in manifest["arrays"].get(a, [])]
    folder = root / CLIPS / clip
    for rel in names:
        size, digest = files[rel]
        try:
            actual = os.stat(folder / rel).st_size
        except OSError:
            raise StoreError(f"clip {clip!r} of store {str(root)!r}: {rel} is missing (a Zarr reader would return "
                             f"zeros in its place); {_fix(root)}") from None
        if actual != size:
            raise StoreError(f"clip {clip!r} of store {str(root)!r}: {rel} has {actual} bytes, its manifest says "
                             f"{size}; {_fix(root)}")
        if full and file_digest(folder / rel) != digest:
            raise StoreError(f"clip {clip!r} of store {str(root)!r}: {rel} does not match its checksum (corrupt "
                             f"bytes); {_fix(root)}")


def verify_store(path: str | os.PathLike) -> dict[str, Any]:
    """Check every clip fully (every file, size and checksum, plus clip folders without a
    manifest); record the broken ones in <out>/verify.json for the next run to rewrite. Writes
    no clip. Returns {"store", "clips", "broken": {clip: reason}}."""
    root = Path(path)
    clips = sorted(p.name for p in (root / CLIPS).iterdir() if p.is_dir()) if (root / CLIPS).is_dir() else []
    broken: dict[str, str] = {}
    for clip in clips:
        try:
            check_clip(root, clip, full=True)
        except StoreError as exc:
            broken[clip] = str(exc)
    result = {"store": str(root), "clips": len(clips), "broken": broken,
              "checked_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if broken:
        write_json(root / VERIFY, result)
    else:
        with contextlib.suppress(FileNotFoundError):
            (root / VERIFY).unlink()
    return result


def _adopt(root: Path, folder: Path) -> None:
    """Give a clip written before manifests existed its manifest, if it is whole: a group whose
    arrays are the ones its store and attrs call for, each with every chunk/shard file its
    metadata implies. Otherwise a StoreError (and `repair` rewrites the clip)."""
    clip = folder.name
    try:
        group = json.loads((folder / "zarr.json").read_text())
        attrs = group["attributes"]
        settings = json.loads((root / "zarr.json").read_text())["attributes"]["drivegen"]["settings"]
        wanted = set(ARRAYS) - ({"images"} if not attrs["has_images"] else set()) - (
            {"bev"} if not settings["conditions"].get("bev", True) else set())
        expected = {}
        for name in sorted(wanted):
            meta = json.loads((folder / name / "zarr.json").read_text())
            outer = meta["chunk_grid"]["configuration"]["chunk_shape"]  # the shard shape when sharded
            expected[name] = _chunk_files(tuple(meta["shape"]), tuple(outer))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"clip {clip!r} of store {str(root)!r} has no manifest and incomplete metadata "
                         f"({exc.__class__.__name__}: {exc}); {_fix(root)}") from None
    write_json(folder / MANIFEST, _manifest(folder, clip, expected), indent=None)


def repair(path: str | os.PathLike) -> dict[str, str]:
    """Remove the broken clips (cheap check of every clip; full check of those verify.json lists)
    so that this run writes them again; whole clips written before manifests existed get one.
    Holds the store lock. Returns {clip: reason}."""
    root = Path(path)
    listed: set[str] = set()
    if (root / VERIFY).is_file():
        with contextlib.suppress(OSError, ValueError):
            listed = set(json.loads((root / VERIFY).read_text()).get("broken", {}))
    removed: dict[str, str] = {}
    with store_lock(root):
        for folder in sorted((root / CLIPS).iterdir()) if (root / CLIPS).is_dir() else []:
            if not folder.is_dir():
                continue
            if not (folder / MANIFEST).exists() and not (folder / "zarr.json").exists():
                continue  # neither: not a clip (nothing to rewrite)
            try:
                if not (folder / MANIFEST).exists():
                    _adopt(root, folder)
                check_clip(root, folder.name, full=folder.name in listed)
            except StoreError as exc:
                removed[folder.name] = str(exc)
                # Renamed out of clips/ first (atomic: readers see it gone), then deleted.
                aside = root / PARTIAL / f"broken.{folder.name}.{uuid.uuid4().hex[:8]}"
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.rename(folder, aside)
                shutil.rmtree(aside, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (root / VERIFY).unlink()  # its findings are acted on
    return removed


def consolidated_clips(path: str | os.PathLike) -> set[str] | None:
    """Clip ids listed in the root's consolidated metadata (None: not consolidated)."""
    meta = json.loads((Path(path) / "zarr.json").read_text()).get("consolidated_metadata")
    if not meta:
        return None
    prefix = CLIPS + "/"
    return {k[len(prefix):] for k in meta.get("metadata", {}) if k.startswith(prefix) and "/" not in k[len(prefix):]}


def consolidate(path: str | os.PathLike) -> None:
    """Consolidate all metadata into the root zarr.json (readers then list clips in one read).

    Skipped when the consolidated metadata already lists exactly the clips present, so that a
    rerun that adds no clip rewrites nothing but report.json. Under the store lock; clip folders
    still being written live under `_partial/` and are not part of the hierarchy.
    """
    with store_lock(path):
        if consolidated_clips(path) == completed_clips(path):
            return
        with warnings.catch_warnings():
            # report.json, manifests, _partial and _locks are not Zarr nodes, and consolidated
            # metadata is a zarr-python extension of v3: all warn on every call; none is a problem.
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(str(path))


def _zarr_call(path: Path, fn):
    """``fn()``, with Zarr's own errors (and the JSON / OS errors under them) re-raised as a
    StoreError naming the store and the fix."""
    try:
        return fn()
    except StoreError:
        raise
    except Exception as exc:  # zarr raises many types (its own, KeyError, ValueError, JSON, OS)
        raise StoreError(f"the clip store {str(path)!r} cannot be opened ({exc.__class__.__name__}: {exc}); rerun "
                         f"`python -m drivegen.preprocess out={path}`, or delete the folder to rebuild it") from None


def open_root(path: str | os.PathLike) -> zarr.Group:
    """The store's root group, read-only, from its consolidated metadata.

    A store whose first preprocessing run never finished has no consolidated metadata: that is
    a StoreError saying to rerun preprocessing (which keeps the clips already written)."""
    path = Path(path)
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except FileNotFoundError:
        raise StoreError(f"no clip store at {str(path)!r} (no zarr.json); write one with "
                         f"`python -m drivegen.preprocess out={path}`") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"the clip store's {str(path / 'zarr.json')!r} cannot be read ({exc}); rerun "
                         f"`python -m drivegen.preprocess out={path}`, or delete the folder to rebuild it") from None
    if not meta.get("consolidated_metadata"):
        raise StoreError(f"the clip store {str(path)!r} was never finished by a preprocessing run (its first run "
                         f"was interrupted: no consolidated metadata); rerun `python -m drivegen.preprocess "
                         f"out={path}` (it keeps the clips already written)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # consolidated metadata is a v3 extension
        return _zarr_call(path, lambda: zarr.open_group(str(path), mode="r", use_consolidated=True))


def write_report(path: str | os.PathLike, report: Mapping[str, Any]) -> None:
    """Write report.json atomically (temp file, then rename)."""
    write_json(Path(path) / REPORT, report)
