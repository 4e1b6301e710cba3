"""Training and held-out clips from a folder of videos (mp4 files or frame folders), any content.

The whole folder is read into memory once as uint8 (the heads' data are small; a streaming loader
is future work). The last ``data.held_out`` videos, in path order, are kept for evaluation only.
Training clips are random windows of ``data.frames`` frames cropped to ``data.crop``; evaluation
clips are fixed windows of whole frames.

Shape legend: c channels, F frames, H W size, B batch.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from chopgrad_core.errors import HeadConfigError
from chopgrad_core.heads.restoration import check_frames
from chopgrad_core.video import VideoError, list_videos, read_video, to_float


@dataclass(kw_only=True)
class HeadDataConfig:
    """Where clips come from (``configs/finetune/data/*.yaml``)."""

    root: str = "datasets/sample/nuscenes/sweeps"
    """Folder of videos: mp4 files and frame folders (images in file-name order), searched recursively."""
    degraded_root: Optional[str] = None
    """Folder mirroring root with the degraded render of each video (same relative path and frame
    count): degraded/clean pairs (task=enhance). null = synthetic degradation by the task."""
    prepare: Optional[list[str]] = field(
        default_factory=lambda: ["drivegen.data.sample_data", "--out", "datasets/sample"])
    """Module and arguments run as ``python -m ...`` when root is missing (makes the embedded
    sample data); null = fail with an error instead."""
    frames: int = 5
    """Frames per clip: 1 + 4k (the Wan VAE's temporal compression)."""
    crop: list[int] = field(default_factory=lambda: [64, 96])
    """[H, W] of training crops; multiples of 16. Evaluation takes whole frames."""
    held_out: int = 1
    """Videos (the last in path order) kept out of training for evaluation."""
    eval_clips: int = 4
    """Evaluation clips per held-out video."""

    def __post_init__(self) -> None:
        if not self.root:
            raise HeadConfigError("data.root is empty; set data.root=/path/to/videos (a folder of mp4 files or "
                                  "frame folders)")
        check_frames(self.frames, f"data.frames={self.frames}: a clip")
        if len(self.crop) != 2 or min(self.crop) < 16 or any(s % 16 for s in self.crop):
            raise HeadConfigError(f"data.crop={list(self.crop)} must be [H, W], multiples of 16")
        if self.held_out < 1 or self.eval_clips < 1:
            raise HeadConfigError(f"data.held_out={self.held_out} and data.eval_clips={self.eval_clips} must be >= 1")


def ensure_root(cfg: HeadDataConfig) -> None:
    """Run ``data.prepare`` when ``data.root`` is missing, or fail naming the command and the key."""
    root = Path(cfg.root)
    if root.exists():
        return
    if not cfg.prepare:
        raise VideoError(f"data.root={cfg.root!r} does not exist; set data.root to a folder of videos")
    command = f"python -m {' '.join(cfg.prepare)}"
    # find_spec of the top-level package only locates it; nothing is imported.
    if importlib.util.find_spec(cfg.prepare[0].split(".")[0]) is None:
        raise VideoError(f"data.root={cfg.root!r} does not exist and {cfg.prepare[0]!r} (data.prepare) is not "
                         f"installed: run `{command}` where it is, or set data.root to a folder of videos")
    print(f"data.root={cfg.root!r} is missing: running `{command}` (data.prepare)", flush=True)
    done = subprocess.run([sys.executable, "-m", *cfg.prepare])
    if done.returncode != 0 or not root.exists():
        raise VideoError(f"`{command}` (data.prepare) exited with {done.returncode} and data.root={cfg.root!r} "
                         "is still missing; run it by hand or set data.root")


@dataclass
class Video:
    name: str
    clean: np.ndarray  # (F H W 3) uint8
    degraded: Optional[np.ndarray] = None


class VideoSet:
    """The videos of ``data.root`` (and their pairs), split into training and held-out videos."""

    def __init__(self, cfg: HeadDataConfig) -> None:
        self.cfg = cfg
        ensure_root(cfg)
        root = Path(cfg.root)
        paths = list_videos(root)
        if not paths:
            raise VideoError(f"data.root={cfg.root!r} holds no mp4 files or frame folders")
        videos, short = [], []
        for path in paths:
            clean = read_video(path)
            degraded = self._pair(root, path, clean) if cfg.degraded_root else None
            if clean.shape[0] < cfg.frames:
                short.append(f"{path} ({clean.shape[0]})")
                continue
            if clean.shape[1] < cfg.crop[0] or clean.shape[2] < cfg.crop[1]:
                raise VideoError(f"video {str(path)!r} is {clean.shape[1]}x{clean.shape[2]} pixels, smaller than "
                                 f"data.crop={list(cfg.crop)}; lower data.crop")
            videos.append(Video(str(path), clean, degraded))
        if short:
            print(f"skipping {len(short)} videos shorter than data.frames={cfg.frames}: {', '.join(short[:3])}"
                  + (" ..." if len(short) > 3 else ""))
        if len(videos) <= cfg.held_out:
            raise VideoError(f"data.root={cfg.root!r} has {len(videos)} usable videos; need more than "
                             f"data.held_out={cfg.held_out} (one or more to train on)")
        self.train, self.held_out = videos[: -cfg.held_out], videos[-cfg.held_out :]

    def _pair(self, root: Path, path: Path, clean: np.ndarray) -> np.ndarray:
        other = Path(self.cfg.degraded_root) / path.relative_to(root)
        if not other.exists():
            raise VideoError(f"video {str(path)!r} has no degraded pair: {str(other)!r} does not exist "
                             "(data.degraded_root must mirror data.root)")
        degraded = read_video(other)
        if degraded.shape[0] != clean.shape[0]:
            raise VideoError(f"pair lengths differ: {str(other)!r} has {degraded.shape[0]} frames, "
                             f"{str(path)!r} has {clean.shape[0]}")
        if degraded.shape[1:] != clean.shape[1:]:
            raise VideoError(f"pair sizes differ: {str(other)!r} is {degraded.shape[1]}x{degraded.shape[2]}, "
                             f"{str(path)!r} is {clean.shape[1]}x{clean.shape[2]}")
        return degraded

    def _clip(self, video: Video, f0: int, y0: int, x0: int,
              size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        f, (h, w) = self.cfg.frames, size or self.cfg.crop
        window = (slice(f0, f0 + f), slice(y0, y0 + h), slice(x0, x0 + w))
        clean = to_float(video.clean[window])
        degraded = to_float(video.degraded[window]) if video.degraded is not None else None
        return clean, degraded

    def _origin(self, video: Video, u: list[float]) -> tuple[int, int, int]:
        frames, h, w = video.clean.shape[:3]
        (ch, cw) = self.cfg.crop
        return (int(u[0] * (frames - self.cfg.frames + 1)), int(u[1] * (h - ch + 1)), int(u[2] * (w - cw + 1)))

    def batch(self, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Random training clips: clean (B c F H W) and, for pairs, degraded."""
        clips = []
        for _ in range(size):
            video = self.train[int(torch.randint(len(self.train), (1,), generator=g))]
            clips.append(self._clip(video, *self._origin(video, torch.rand(3, generator=g).tolist())))
        return _stack(clips)

    def evaluation(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Fixed held-out clips (1 c F H W each): evenly spaced in time, whole frames centre-cropped
        to multiples of 16 (the size the model takes)."""
        out = []
        for video in self.held_out:
            frames, h, w = video.clean.shape[:3]
            ch, cw = h // 16 * 16, w // 16 * 16
            for i in range(self.cfg.eval_clips):
                f0 = int((i + 0.5) / self.cfg.eval_clips * (frames - self.cfg.frames + 1))
                out.append(_stack([self._clip(video, f0, (h - ch) // 2, (w - cw) // 2, (ch, cw))]))
        return out


def _stack(clips):
    clean = torch.stack([c for c, _ in clips])
    degraded = torch.stack([d for _, d in clips]) if clips[0][1] is not None else None
    return clean, degraded
