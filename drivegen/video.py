"""Writing videos people can look at: mp4 per camera and mosaics (imageio with its bundled ffmpeg).

Shape legend: T frames, K cameras, H W image size. Frames are float in [-1, 1] or uint8.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8."""
    x = frames.detach().float().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if x.dtype != np.uint8:
        x = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.moveaxis(x, -3, -1)


class Mp4Writer:
    """An mp4 written frame by frame (streaming: memory does not grow with length), atomic: it
    appears under its name only when closed without error; on error the temp file is removed.

        with Mp4Writer("out/cam.mp4") as w:
            for group_FHW3 in groups:
                w.append(group_FHW3)
    """

    def __init__(self, path: str | os.PathLike, fps: int = 12) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.stem + ".partial.mp4")
        # macro_block_size=1: keep odd sizes as they are instead of resizing with a warning.
        self._writer = imageio.get_writer(self._tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1)
        self.frames = 0

    def append(self, frames_THW3: np.ndarray) -> None:
        for frame in frames_THW3:
            self._writer.append_data(frame)
            self.frames += 1

    def close(self, ok: bool = True) -> Path:
        self._writer.close()
        if ok:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
        return self.path

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def write_mp4(path: str | os.PathLike, frames_THW3: np.ndarray, fps: int = 12) -> Path:
    """Atomic: written to a temp name, then renamed."""
    with Mp4Writer(path, fps) as writer:
        writer.append(frames_THW3)
    return writer.path


def mosaic(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of (T, K, H, W, 3) uint8 videos -> (T, rows*H, K*W, 3): cameras across, rows down."""
    t = rows[0].shape[0]
    out = []
    for row in rows:
        k, h, w = row.shape[1:4]
        strip = np.full((t, h, k * w + (k - 1) * gap, 3), 255, np.uint8)
        for i in range(k):
            strip[:, :, i * (w + gap) : i * (w + gap) + w] = row[:, i]
        out.append(strip)
    sep = np.full((t, gap, out[0].shape[2], 3), 255, np.uint8)
    stacked = [out[0]]
    for strip in out[1:]:
        stacked += [sep, strip]
    return np.concatenate(stacked, axis=1)
