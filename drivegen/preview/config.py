"""Settings of ``python -m drivegen.preview``, mirrored by configs/preview.yaml (the dataclass is the
one source of truth: ``drivegen.config`` registers it with Hydra's ConfigStore)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from drivegen.errors import ConfigError

__all__ = ["PreviewConfig"]


@dataclass(kw_only=True)
class PreviewConfig:
    """What to preview, which frames, and where the picture goes."""

    source: str = "datasets/sample"
    """A log, a store clip or a generated scenario: a folder of logs (python -m
    drivegen.data.sample_data writes datasets/sample), a nuScenes dataroot, a Waymo .tfrecord,
    a clip store (.zarr; pick the clip with `clip`) or one of its clips (<store>/clips/<id>), or a
    generated scenario's folder (outputs/generate/<name>/, holding manifest.json)."""
    log: Optional[str] = None
    """The log to show when `source` holds several (nuScenes scene name, Waymo segment file stem);
    null: the first one found."""
    clip: Optional[str] = None
    """The clip id when `source` is a store; null: the first clip."""
    frame: int = 0
    """First frame shown (index within the log, the clip or the generated video)."""
    num_frames: int = 1
    """Frames shown from `frame`: 1 writes a PNG, more an mp4; 0: every frame to the end."""
    image_size: List[int] = field(default_factory=lambda: [144, 256])
    """(height, width) of each camera tile for logs; store clips and generated videos keep their own size."""
    out: Optional[str] = None
    """Output file; null: outputs/preview/<log or clip>_<frame>.png (.mp4 for several frames)."""
    fps: float = 10.0
    """Frame rate of the mp4."""

    def __post_init__(self) -> None:
        if not isinstance(self.frame, int) or self.frame < 0:
            raise ConfigError(f"frame = {self.frame!r}; expected an int >= 0 (the first frame shown)")
        if not isinstance(self.num_frames, int) or self.num_frames < 0:
            raise ConfigError(f"num_frames = {self.num_frames!r}; expected 1 (PNG), more (mp4) or 0 (to the end)")
        if len(self.image_size) != 2 or not all(isinstance(s, int) and s >= 16 for s in self.image_size):
            raise ConfigError(f"image_size = {list(self.image_size)!r}; expected [height, width], each >= 16")
        if not self.fps > 0:
            raise ConfigError(f"fps = {self.fps!r}; expected > 0")
