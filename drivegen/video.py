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


def write_mp4(path: str | os.PathLike, frames_THW3: np.ndarray, fps: int = 12) -> Path:
    """Atomic: written to a temp name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.mp4")
    # macro_block_size=1: keep odd sizes as they are instead of resizing with a warning.
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in frames_THW3:
            writer.append_data(frame)
    os.replace(tmp, path)
    return path


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
