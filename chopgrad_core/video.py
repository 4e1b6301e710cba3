"""Video files in and out: mp4 (the ffmpeg bundled with imageio-ffmpeg) and folders of frame images.

A *video source* is either an ``.mp4`` file or a *frame folder* (a folder holding image files,
taken in file-name order). Reading returns uint8 frames (F, H, W, 3). Writing is streaming and
atomic: :class:`Mp4Writer` pipes frames group by group into ffmpeg (memory does not grow with the
video's length) and writes through ``chopgrad_core.atomic`` (a temporary sibling renamed into
place on success, removed on failure), so a crash never leaves a truncated video behind;
:func:`write_mp4` is one ``Mp4Writer`` for frames already in memory. An ffmpeg failure (a bad
frame size, a full disk, a killed encoder: "Broken pipe") raises :class:`VideoError` naming the
output file and ffmpeg's own message. Still images go through ``chopgrad_core.atomic.write_png``.

Shape legend: F frames, K videos side by side, H W image size. Float frames are in [-1, 1].
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from contextlib import ExitStack
from fractions import Fraction
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from chopgrad_core.atomic import atomic_path
from chopgrad_core.errors import VideoError  # noqa: F401  (raised here; importable from here too)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4",)
#: H.264 constant rate factor of written videos (0 lossless .. 51 worst); 10 is what imageio's
#: ``quality=8`` meant, the setting these files were written with before.
CRF = 10

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
# Writing (streaming, atomic)
# ----------------------------------------------------------------------------------------------


class Mp4Writer:
    """An H.264 mp4 written frame group by frame group, atomically.

        writer = Mp4Writer("out/cam.mp4", fps=12)
        for group in groups:                 # (F H W 3) uint8 each
            writer.append(group)
        writer.close()                       # ok=False: discard (the temp file is removed)

    or ``with Mp4Writer(path) as w: ...`` (closed with ok=True unless the block raised). The file
    appears under ``path`` only when closed with ``ok=True`` and ffmpeg exited cleanly. Frames
    are piped to ffmpeg as raw RGB; ffmpeg's messages go to a temporary file, so a failure (an odd
    frame size, which yuv420p cannot hold, a full disk, a killed ffmpeg: "Broken pipe") raises
    :class:`VideoError` naming the file and ffmpeg's reason, and nothing is left under ``path``.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 12) -> None:
        if not fps or fps <= 0:
            raise VideoError(f"video {str(path)!r}: fps={fps} must be > 0")
        self.path, self.fps = Path(path), fps
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))  # renamed onto path by a clean close
        self._log = self._stack.enter_context(tempfile.TemporaryFile())  # ffmpeg's stderr
        self._proc: subprocess.Popen | None = None  # started by the first frame (its size sets the stream's)
        self._size: tuple[int, int] | None = None
        self._closed = False

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self.close(ok=exc_type is None)

    def __del__(self) -> None:
        # A writer dropped without close() (an error between two appends) must not leave an ffmpeg
        # process or a temporary file behind; it is discarded, never published.
        if not getattr(self, "_closed", True):
            try:
                self.close(ok=False)
            except Exception:
                pass

    def _start(self, h: int, w: int) -> None:
        import imageio_ffmpeg

        fps = str(Fraction(self.fps).limit_denominator())  # a rational: 24000/1001 stays exact
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", fps, "-i", "-", "-an",
               "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(CRF), "-f", "mp4", str(self._tmp)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        self._size = (h, w)

    def append(self, frames_FHW3: np.ndarray) -> None:
        """Frames (F, H, W, 3) uint8 (or one frame (H, W, 3)); every frame the size of the first."""
        if self._closed:
            raise VideoError(f"video {str(self.path)!r} is already closed; open a new Mp4Writer")
        frames = np.asarray(frames_FHW3)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            self.close(ok=False)
            raise VideoError(f"video {str(self.path)!r}: frames must be (F, H, W, 3) uint8, got "
                             f"{tuple(frames.shape)} {frames.dtype} (convert float frames with to_uint8)")
        if self._proc is None:
            self._start(*frames.shape[1:3])
        if frames.shape[1:3] != self._size:
            self.close(ok=False)
            raise VideoError(f"video {str(self.path)!r}: a frame of {frames.shape[1]}x{frames.shape[2]} pixels "
                             f"after frames of {self._size[0]}x{self._size[1]}; every frame must have the same size")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except OSError as e:  # BrokenPipeError: ffmpeg has exited; its log says why
            self._fail(f"{type(e).__name__}: {e}")

    def close(self, ok: bool = True) -> Path | None:
        """Finish the file (``ok=True``: rename it into place; returns its path) or discard it."""
        if self._closed:
            return self.path if ok else None
        self._closed = True
        if self._proc is None and ok:
            self._stack.__exit__(VideoError, None, None)  # removes the (never created) temp file
            raise VideoError(f"video {str(self.path)!r} has no frames; append frames before closing")
        if self._proc is not None:
            if not ok:
                self._proc.kill()
            try:
                self._proc.stdin.close()
            except OSError:
                pass  # ffmpeg already exited; its return code tells
            code = self._proc.wait()
            if ok and code != 0:
                self._closed = False  # let _fail clean up
                self._fail(f"ffmpeg exited with status {code}")
        if ok:
            self._stack.close()  # renames the temp file onto path
            return self.path
        self._stack.__exit__(VideoError, VideoError("discarded"), None)  # removes the temp file
        return None

    def _fail(self, what: str) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None and not what.startswith("ffmpeg exited"):
            what += f", ffmpeg exited with status {self._proc.wait()}"
        self._log.seek(0)
        lines = [ln.strip()[:200] for ln in self._log.read().decode(errors="replace").splitlines() if ln.strip()]
        # ffmpeg names the cause first ("width not divisible by 2") and the consequence last.
        reason = " | ".join(dict.fromkeys(lines[:2] + lines[-1:])) or "no message"
        self._closed = True
        self._stack.__exit__(VideoError, VideoError(what), None)  # removes the temp file
        raise VideoError(f"cannot write video {str(self.path)!r}: ffmpeg failed ({what}; ffmpeg says: {reason}); "
                         "check the frame size (H.264 needs even height and width), the free disk space and "
                         "that ffmpeg runs") from None


def write_mp4(path: str | os.PathLike, frames_FHW3: np.ndarray, fps: float = 12) -> Path:
    """Frames (F, H, W, 3) uint8 as an mp4, atomically (one :class:`Mp4Writer`)."""
    with Mp4Writer(path, fps) as writer:
        writer.append(frames_FHW3)
    return Path(path)


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
