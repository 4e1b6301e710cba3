"""Settings of preprocessing (``python -m drivegen.preprocess``), mirrored by configs/preprocess.yaml.

The dataclasses are the one source of truth: ``drivegen.config`` registers ``PreprocessConfig`` with
Hydra's ConfigStore, so the YAML preset and every command-line override are checked against these
fields and types, and each ``__post_init__`` checks ranges with the key named in the message.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

from conditions import BevConfig, LayoutConfig
from drivegen.errors import PreprocessConfigError
from drivegen.workpool import RayConfig

__all__ = ["ClipConfig", "CompressionConfig", "ConditionsConfig", "PreprocessConfig", "RayConfig", "SplitConfig",
           "load_config"]


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


@dataclass(kw_only=True)
class ClipConfig:
    """How logs are cut into clips."""

    length: int = 8
    """Frames per clip (T). A log shorter than this gives no clip (reported as too_short)."""
    stride: int = 8
    """Frames between the starts of consecutive clips; < length makes clips overlap."""

    def __post_init__(self) -> None:
        for name in ("length", "stride"):
            if not _positive_int(getattr(self, name)):
                raise PreprocessConfigError(f"clip.{name} = {getattr(self, name)!r}; expected a positive int")


@dataclass(kw_only=True)
class ConditionsConfig:
    """What `conditions.render_frame` renders (fields of conditions.LayoutConfig / BevConfig)."""

    image_size: List[int] = field(default_factory=lambda: [256, 448])
    """(height, width) of images and every per-camera condition in the store."""
    max_boxes: int = 64
    """Box token slots per camera (S)."""
    near_m: float = 0.1
    """Near clipping plane, metres."""
    depth_max_m: float = 80.0
    """Depth that maps to the darkest layout depth value, metres."""
    map_range_m: float = 80.0
    """Map geometry is drawn up to this far from each camera, metres."""
    line_width_px: int = 2
    """Stroke width of map lines in the camera rasters."""
    control_outline: bool = True
    """Darken box face outlines in the control image."""
    ray_stride: int = 8
    """One Plücker ray per ray_stride x ray_stride pixels."""
    bev: bool = True
    """Store the bird's-eye-view raster (false: no `bev` array)."""
    bev_size_px: List[int] = field(default_factory=lambda: [200, 200])
    """(height, width) of the BEV raster."""
    bev_metres_per_px: float = 0.5
    """BEV ground resolution."""

    def __post_init__(self) -> None:
        if len(self.image_size) != 2 or not all(_positive_int(s) for s in self.image_size):
            raise PreprocessConfigError(
                f"conditions.image_size = {list(self.image_size)!r}; expected [height, width] positive ints"
            )
        try:
            self.layout_config()
        except ValueError as exc:  # LayoutConfig / BevConfig say which of their fields is wrong
            raise PreprocessConfigError(f"conditions: {exc} (set the key of the same name under conditions.)") from None

    def layout_config(self) -> LayoutConfig:
        bev = None
        if self.bev:
            bev = BevConfig(size_px=tuple(self.bev_size_px), metres_per_px=float(self.bev_metres_per_px))
        return LayoutConfig(
            image_size=tuple(int(s) for s in self.image_size),
            max_boxes=self.max_boxes,
            near_m=float(self.near_m),
            depth_max_m=float(self.depth_max_m),
            map_range_m=float(self.map_range_m),
            line_width_px=self.line_width_px,
            control_outline=self.control_outline,
            ray_stride=self.ray_stride,
            bev=bev,
        )


@dataclass(kw_only=True)
class CompressionConfig:
    """Blosc compression of every stored array."""

    cname: str = "zstd"
    """Blosc compressor: zstd (smallest), lz4 (fastest), blosclz, lz4hc, zlib."""
    level: int = 1
    """Compression level 0..9; 1 is the fastest zstd level and already ~100x on layouts."""
    bitshuffle: bool = True
    """Bit-shuffle before compressing (0/1 layout channels shrink far more)."""

    def __post_init__(self) -> None:
        names = ("zstd", "lz4", "blosclz", "lz4hc", "zlib")
        if self.cname not in names:
            raise PreprocessConfigError(f"compression.cname = {self.cname!r}; expected one of {list(names)}")
        if not (isinstance(self.level, int) and 0 <= self.level <= 9):
            raise PreprocessConfigError(f"compression.level = {self.level!r}; expected an int in 0..9")


@dataclass(kw_only=True)
class SplitConfig:
    """Which logs are held out for validation. Recorded per log in every clip's attrs (``split``):
    training never reads ``val`` clips, evaluation reads only them."""

    val_logs: Optional[List[str]] = None
    """Log names (scene / segment names) that form the val split; null: ``val_fraction`` decides."""
    val_fraction: float = 0.2
    """Without ``val_logs``: the share of logs in val, chosen deterministically by a hash of the log
    name (the same log is always on the same side, whichever other logs a store holds)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 <= self.val_fraction < 1.0):
            raise PreprocessConfigError(f"split.val_fraction = {self.val_fraction!r}; expected a number in [0, 1)")
        if self.val_logs is not None and not all(isinstance(n, str) and n for n in self.val_logs):
            raise PreprocessConfigError(f"split.val_logs = {self.val_logs!r}; expected log names, or null")

    def split_of(self, log_name: str) -> str:
        """'train' or 'val' for a log."""
        if self.val_logs is not None:
            return "val" if log_name in set(self.val_logs) else "train"
        # A stable hash (Python's hash() is salted per process): the first 8 bytes of SHA-256 as a
        # number in [0, 1).
        u = int.from_bytes(hashlib.sha256(log_name.encode()).digest()[:8], "big") / 2.0**64
        return "val" if u < self.val_fraction else "train"


@dataclass(kw_only=True)
class PreprocessConfig:
    """`python -m drivegen.preprocess`: which logs, which store, which clips, where to run."""

    input_root: str = "datasets/sample"
    """Directory searched for logs (drivegen.data.ingest.discover_logs): nuScenes roots, Waymo TFRecords."""
    out: str = "datasets/clips.zarr"
    """The Zarr v3 store; rerunning into it adds only the missing clips."""
    cameras: Optional[List[str]] = None
    """Cameras to store, in this order; null: every camera of each log (a log lacking one fails)."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    conditions: ConditionsConfig = field(default_factory=ConditionsConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    progress: bool = True
    """Show progress bars (logs, clips); the summary table is printed either way."""
    verify: bool = False
    """Only check the store at `out`: every clip's files against its manifest (sizes and checksums);
    writes no clip, exits 1 if any is broken. The next normal run rewrites the broken ones."""

    def __post_init__(self) -> None:
        if not self.out:
            raise PreprocessConfigError("out = ''; set out= to the path of the Zarr store")
        if self.cameras is not None:
            cams = list(self.cameras)
            if not cams or not all(isinstance(c, str) and c for c in cams) or len(set(cams)) != len(cams):
                raise PreprocessConfigError(f"cameras = {cams!r}; expected distinct camera names, or null for all")

    def store_settings(self) -> dict[str, Any]:
        """What every clip of a store must agree on (checked when rerunning into a store)."""
        return {
            "clip": dataclasses.asdict(self.clip),
            "conditions": dataclasses.asdict(self.conditions),
            "cameras": None if self.cameras is None else list(self.cameras),
            "split": dataclasses.asdict(self.split),
        }


def load_config(overrides: Optional[List[str]] = None) -> PreprocessConfig:
    """configs/preprocess.yaml with Hydra-style ``key=value`` overrides, as a checked dataclass."""
    from drivegen.config import compose

    return compose(PreprocessConfig, "preprocess", overrides or [])
