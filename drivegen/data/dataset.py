"""`ClipDataset`: a torch Dataset of multi-camera clips from a store written by drivegen.preprocess.

    ds = ClipDataset("datasets/clips.zarr", clip_length=4, cameras=["CAM_FRONT", "CAM_BACK"])
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")

Items (T = clip_length frames, K = cameras, H W = the store's image size):
- images        (T, K, 3, H, W) float32 in [-1, 1]; zeros for a conditions-only clip (has_images False)
- control       (T, K, 3, H, W) float32 in [-1, 1]
- layout        (T, K, C, H, W) uint8, as stored (class channels 0/1, depth byte, instance id:
                see conditions.layout; `conditions.depth_from_layout` decodes metres)
- box_corners (T, K, S, 8, 2), box_corner_mask, box_params (T, K, S, P), box_class, box_track,
  box_mask (T, K, S) bool, box_visible_px: the box tokens of conditions.tokens
- intrinsics (T, K, 3, 3), cam_to_ego (T, K, 4, 4), plucker (T, K, 6, h, w): the camera embedding
- bev (T, Cb, Hb, Wb) uint8 (absent if the store has no BEV), ego_to_world (T, 4, 4) float64,
  timestamp_us (T,), frame_index (T,)
- has_images (bool tensor) and metadata: clip, log, dataset, start_frame (int); the camera
  order is `ClipDataset.cameras`.

Filtering: `datasets=` keeps the clips of some source datasets; `require_map=True` skips clips
whose log has no map (their map channels are empty: attrs["has_map"] is False); `where=` is any
predicate on a clip's attrs, e.g. `lambda a: not a["dropped"]["unmapped_classes"]` (the attrs'
`dropped` / `log_dropped` count what preprocessing left out: see datasets/README.md).

Resolution: items come at the store's resolution; asking for another is an error, not a resize.
Conditions do not survive resampling (instance ids and class channels would blend, line widths
and depth bytes would change): preprocess a store at the size you train at.

Sampling: `sequential` yields every non-overlapping window of clip_length frames of every stored
clip, in order; `random` yields one item per stored clip with a window start drawn afresh on
each access (torch's RNG, which DataLoader seeds per worker and epoch). Shuffling clips is the
DataLoader's job.

Integrity: each access checks that every file of the clip's manifest is there with its size (a
missing shard would otherwise read as zeros); a damaged clip is a StoreError naming the clip and
the fix (rerun preprocessing, which rewrites it), never zeros.

Workers: the store is opened lazily, once per process (zarr runs an asyncio loop on a thread
that must not cross a fork); the dataset pickles without it, so it works with spawn and
forkserver DataLoader workers.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import zarr

from drivegen.errors import DatasetConfigError, StoreError
from drivegen.data.store import CLIPS, FORMAT, check_clip, open_root, read_manifest

__all__ = ["ClipDataset", "DatasetConfigError"]


@dataclass(frozen=True, slots=True)
class _Item:
    clip: str
    offset: int  # first frame within the stored clip; -1: drawn at random on access
    max_offset: int


_PER_CAMERA = (
    "layout",
    "control",
    "box_corners",
    "box_corner_mask",
    "box_params",
    "box_class",
    "box_track",
    "box_mask",
    "box_visible_px",
    "intrinsics",
    "cam_to_ego",
    "plucker",
)
_PER_FRAME = ("ego_to_world", "timestamp_us", "frame_index", "bev")


class _CameraPick:
    """Which stored cameras a clip's per-camera arrays are read at, in the order asked for.

    Reads the span of stored cameras as one slice and picks from it in numpy: zarr 3.1.5 serves an
    integer-array selection (``oindex``) of a sharded array far more slowly and with far more
    memory than the same cameras as a slice (measured: one 33-frame, six-camera clip's images at
    256x448, 14.5 s and 7.8 GB against 0.2 s and 0.19 GB)."""

    def __init__(self, index: list[int]):
        self.span = slice(min(index), max(index) + 1)
        pick = np.asarray(index) - self.span.start
        self.pick = None if np.array_equal(pick, np.arange(self.span.stop - self.span.start)) else pick

    def read(self, array, frames: slice) -> np.ndarray:
        out = array[frames, self.span]
        return np.ascontiguousarray(out if self.pick is None else out[:, self.pick])


class ClipDataset(torch.utils.data.Dataset):
    """Clips of `clip_length` frames of `cameras` from the store at `path` (see module doc)."""

    def __init__(
        self,
        path: str | os.PathLike,
        clip_length: Optional[int] = None,
        cameras: Optional[Sequence[str]] = None,
        image_size: Optional[Sequence[int]] = None,
        sampling: str = "sequential",
        datasets: Optional[Sequence[str]] = None,
        require_map: bool = False,
        where: Optional[Callable[[dict[str, Any]], bool]] = None,
        split: Optional[str] = None,
    ):
        """
        path: the store (`PreprocessConfig.out`).
        clip_length: frames per item, <= the stored clip length; None: the stored length.
        cameras: camera names in the order wanted; None: the cameras of the clips (all clips must agree).
        image_size: (H, W) expected; must equal the store's (None: the store's).
        sampling: 'sequential' or 'random' (see module doc).
        datasets: keep only clips of these source datasets ('nuscenes', 'waymo', 'synthetic');
            None: all. Use it to pick one rig when a store mixes nuScenes and Waymo cameras.
        require_map: skip clips whose log has no map (attrs["has_map"] is False; clips written
            before the store recorded it are kept).
        where: keep only clips whose attrs satisfy this predicate (applied in __init__, not kept:
            the dataset still pickles for spawn workers).
        split: 'train' or 'val' (the log's split recorded by preprocessing, ``split.*`` settings);
            None: both. Training reads 'train' only, evaluation 'val' only.
        """
        self.path = str(Path(path).resolve())
        if not (Path(self.path) / "zarr.json").is_file():
            raise StoreError(
                f"no clip store at {self.path!r}; write one with `python -m drivegen.preprocess out={path}`"
            )
        root = open_root(self.path)
        meta = root.attrs.get("drivegen") or {}
        if meta.get("format") != FORMAT:
            raise StoreError(f"{self.path!r} is not a drivegen clip store (format {FORMAT!r})")
        settings = meta["settings"]
        self.stored_length = int(settings["clip"]["length"])
        self.image_size = tuple(int(s) for s in settings["conditions"]["image_size"])
        if sampling not in ("sequential", "random"):
            raise DatasetConfigError(f"sampling = {sampling!r}; expected 'sequential' or 'random'")
        self.sampling = sampling
        # 1. Clips (from the consolidated metadata: one read), filtered by source dataset.
        clips = {name: dict(g.attrs) for name, g in root[CLIPS].groups()}
        if datasets is not None:
            clips = {n: a for n, a in clips.items() if a["dataset"] in set(datasets)}
        if split is not None:
            if split not in ("train", "val"):
                raise DatasetConfigError(f"split = {split!r}; expected 'train', 'val' or None")
            if any("split" not in a for a in clips.values()):
                raise DatasetConfigError(
                    f"the store {self.path!r} was written before clips recorded their split; preprocess it again "
                    f"into a new out= (split.val_logs / split.val_fraction choose the val logs)")
            clips = {n: a for n, a in clips.items() if a["split"] == split}
        if require_map:
            clips = {n: a for n, a in clips.items() if a.get("has_map") is not False}
        if where is not None:
            clips = {n: a for n, a in clips.items() if where(a)}
        if not clips:
            filters = [f"from datasets {list(datasets)}" if datasets else "", f"in split {split!r}" if split else "",
                       "with a map" if require_map else "",
                       "matching `where`" if where is not None else ""]
            raise DatasetConfigError(
                f"the store {self.path!r} has no clips {' '.join(f for f in filters if f)}".rstrip()
                + "; run python -m drivegen.preprocess first (or widen `datasets`, `require_map`, `where`)"
            )
        # 2. Check the request against what is stored.
        T = self.stored_length if clip_length is None else clip_length
        if not (isinstance(T, int) and 1 <= T <= self.stored_length):
            raise DatasetConfigError(
                f"clip_length = {clip_length!r}; the store holds clips of {self.stored_length} frames: "
                f"pass 1..{self.stored_length} (or preprocess with a larger clip.length)"
            )
        self.clip_length = T
        if image_size is not None and tuple(image_size) != self.image_size:
            raise DatasetConfigError(
                f"image_size = {tuple(image_size)}; the store was written at {self.image_size} and items are not "
                f"resized (conditions do not survive resampling): pass {self.image_size} or None, or preprocess "
                f"a store with conditions.image_size={list(image_size)}"
            )
        rigs = sorted({tuple(a["cameras"]) for a in clips.values()})
        if cameras is None:
            if len(rigs) > 1:
                raise DatasetConfigError(
                    f"cameras = None, but the clips have different cameras {[list(r) for r in rigs]}; pass cameras= "
                    f"(a subset every clip has) or datasets= to pick one rig"
                )
            cameras = rigs[0]
        cameras = tuple(cameras)
        lacking = sorted({c for r in rigs for c in cameras if c not in r})
        if not cameras or len(set(cameras)) != len(cameras) or lacking:
            raise DatasetConfigError(
                f"cameras = {list(cameras)}: {lacking or 'empty or repeated'} not stored in every clip; stored "
                f"cameras: {[list(r) for r in rigs]}. Pass names from these (datasets= selects one rig)"
            )
        self.cameras = cameras
        self._camera_index = {n: _CameraPick([a["cameras"].index(c) for c in cameras]) for n, a in clips.items()}
        self._attrs = clips
        # 3. Items.
        max_offset = self.stored_length - T
        names = sorted(clips)
        if sampling == "sequential":
            self._items = [_Item(n, o, max_offset) for n in names for o in range(0, max_offset + 1, T)]
        else:
            self._items = [_Item(n, -1, max_offset) for n in names]
        self._root: Optional[zarr.Group] = None
        self._root_pid: Optional[int] = None
        self._manifests: dict[str, dict] = {}  # per process, like _root

    def __len__(self) -> int:
        return len(self._items)

    def metadata(self, index: int) -> dict[str, Any]:
        """Attributes of item `index`'s stored clip (log, dataset, cameras, has_images, ...), without reading arrays."""
        return dict(self._attrs[self._items[index].clip])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_root"], state["_root_pid"], state["_manifests"] = None, None, {}  # reopened lazily in the worker
        return state

    def _group(self, clip: str, arrays: Optional[Sequence[str]] = None) -> zarr.Group:
        """The clip's group, after checking that every file of its manifest (of ``arrays`` only,
        when given: those about to be read) is there with its size (a few stat calls): Zarr reads a
        missing chunk or shard as zeros, which must never reach training. The manifest is read once
        per clip and process; the files are checked every time."""
        if self._root is None or self._root_pid != os.getpid():
            self._root, self._root_pid, self._manifests = open_root(self.path), os.getpid(), {}
        if clip not in self._manifests:
            self._manifests[clip] = read_manifest(self.path, clip)
        check_clip(self.path, clip, self._manifests[clip], arrays=arrays)
        return self._root[f"{CLIPS}/{clip}"]

    @contextlib.contextmanager
    def _reading(self, clip: str):
        """Zarr's and its codecs' errors while reading a clip, as a StoreError naming the clip and the fix."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:  # zarr, numcodecs and the OS raise many types
            raise StoreError(f"clip {clip!r} of store {self.path!r} cannot be read ({exc.__class__.__name__}: {exc}); "
                             f"run `python -m drivegen.preprocess out={self.path} verify=true` to check the store, then "
                             "without verify=true to rewrite the broken clips") from None

    def images(self, index: int) -> torch.Tensor:
        """Item ``index``'s camera frames alone, (T, K, 3, H, W) in [-1, 1]: what fitting a VAE reads
        (no conditions; the clip must have images). Random sampling draws its offset as ``[]`` does."""
        item = self._items[index]
        offset = item.offset if item.offset >= 0 else int(torch.randint(0, item.max_offset + 1, ()).item())
        if not bool(self._attrs[item.clip]["has_images"]):
            raise StoreError(f"clip {item.clip!r} of store {self.path!r} has no camera images (a conditions-only log)")
        group = self._group(item.clip, arrays=["images"])
        with self._reading(item.clip):
            images = self._camera_index[item.clip].read(group["images"], slice(offset, offset + self.clip_length))
        return torch.from_numpy(images).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._items[index]
        offset = item.offset
        if offset < 0:
            offset = int(torch.randint(0, item.max_offset + 1, ()).item())
        group = self._group(item.clip)
        attrs = self._attrs[item.clip]
        frames = slice(offset, offset + self.clip_length)
        cams = self._camera_index[item.clip]
        out: dict[str, Any] = {}
        has_images = bool(attrs["has_images"])
        with self._reading(item.clip):
            # 1. Per-camera arrays: orthogonal selection of the frames and cameras asked for.
            for name in _PER_CAMERA:
                out[name] = torch.from_numpy(cams.read(group[name], frames))
            for name in _PER_FRAME:
                if name in group:
                    out[name] = torch.from_numpy(np.ascontiguousarray(group[name][frames]))
            images = torch.from_numpy(cams.read(group["images"], frames)) if has_images else None
        # 2. Images and control to (T, K, 3, H, W) in [-1, 1].
        T, K = self.clip_length, len(self.cameras)
        H, W = self.image_size
        if images is not None:
            out["images"] = images.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        else:
            out["images"] = torch.zeros((T, K, 3, H, W), dtype=torch.float32)
        out["control"] = out["control"].permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        out["has_images"] = torch.tensor(has_images)
        # 3. Metadata.
        out.update(
            clip=item.clip,
            log=attrs["log"],
            dataset=attrs["dataset"],
            start_frame=int(attrs["start_frame"]) + offset,
        )
        return out
