"""Video files in and out: mp4 (imageio with its bundled ffmpeg) and folders of frame images.

A *video source* is either an ``.mp4`` file or a *frame folder* (a folder holding image files,
taken in file-name order). Reading returns uint8 frames (F, H, W, 3); writing is atomic (a
``.partial`` file, then a rename), so a crash never leaves a truncated video behind.

Shape legend: F frames, K videos side by side, H W image size. Float frames are in [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from chopgrad_core.errors import VideoError  # noqa: F401  (raised here; importable from here too)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4",)



# ----------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8."""
    x = frames.detach().float().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if x.dtype != np.uint8:
        x = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.moveaxis(x, -3, -1)


def to_float(frames_FHW3: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames_FHW3)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file())


def list_videos(root: str | os.PathLike) -> list[Path]:
    """Every mp4 file and frame folder under ``root`` (recursively), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise VideoError(f"video folder {str(root)!r} does not exist or is not a folder")
    found = [p for p in root.rglob("*") if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or is_frame_folder(p)]
    if is_frame_folder(root):
        found.append(root)
    return sorted(found)


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Frames (F, H, W, 3) uint8 of an mp4 file, a frame folder, or a single image (one frame)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video {str(path)!r} does not exist")
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise VideoError(f"frame folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        frames = [_read_image(f) for f in files]
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:
            raise VideoError(f"frame folder {str(path)!r} mixes image sizes {sorted(sizes)}; all frames must match")
        return np.stack(frames)
    if path.stat().st_size == 0:
        raise VideoError(f"video {str(path)!r} is an empty (zero-length) file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image(path)[None]
    try:
        with imageio.get_reader(path, format="FFMPEG") as reader:
            frames = [np.asarray(f)[..., :3] for f in reader]
    except Exception as e:  # imageio raises OSError, RuntimeError or IndexError depending on the damage
        raise VideoError(f"cannot read video {str(path)!r}: {type(e).__name__}: {str(e).strip()[:200]}") from e
    if not frames:
        raise VideoError(f"video {str(path)!r} has no frames")
    return np.stack(frames)


def video_fps(path: str | os.PathLike, default: float = 12.0) -> float:
    """The frame rate an mp4 declares; ``default`` for frame folders and images."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        try:
            with imageio.get_reader(path, format="FFMPEG") as reader:
                return float(reader.get_meta_data().get("fps", default))
        except Exception as e:
            raise VideoError(f"cannot read video {str(path)!r}: {type(e).__name__}: {e}") from e
    return default


def _read_image(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        raise VideoError(f"image {str(path)!r} is an empty (zero-length) file")
    try:
        img = np.asarray(imageio.imread(path))
    except Exception as e:
        raise VideoError(f"cannot read image {str(path)!r}: {type(e).__name__}: {str(e).strip()[:200]}") from e
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img[..., :3].astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Writing (atomic)
# ----------------------------------------------------------------------------------------------


def write_mp4(path: str | os.PathLike, frames_FHW3: np.ndarray, fps: float = 12) -> Path:
    """Atomic: written to a temp name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.mp4")
    try:
        # macro_block_size=1: keep odd sizes as they are instead of resizing with a warning.
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
            for frame in frames_FHW3:
                writer.append_data(frame)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_png(path: str | os.PathLike, image_HW3: np.ndarray) -> Path:
    """Atomic PNG write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.png")
    try:
        imageio.imwrite(tmp, image_HW3)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def mosaic(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of (F, K, H, W, 3) uint8 videos -> (F, rows*H, K*W, 3): videos across, rows down."""
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
