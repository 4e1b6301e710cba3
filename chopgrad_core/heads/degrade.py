"""Degradations that make training inputs from clean video: the pieces each head's pipeline chains.

Every function maps float frames (B c F H W) in [-1, 1] to the same layout; random ones take a
``torch.Generator`` so a seeded run sees the same degradations. Per-clip parameters (a colour shift,
a ghost offset, floater positions) are drawn once per batch element and held over its frames, as a
renderer's or a codec's artefacts are.

Shape legend: B batch, c channels (3), F frames, H W image size.
"""

from __future__ import annotations

import io
import math
import os
import tempfile

import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from chopgrad_core.video import to_float, to_uint8


def _images(x: torch.Tensor) -> torch.Tensor:
    """(B c F H W) -> (B*F c H W)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _videos(x: torch.Tensor, b: int) -> torch.Tensor:
    """(B*F c H W) -> (B c F H W)."""
    n, c, h, w = x.shape
    return x.reshape(b, n // b, c, h, w).permute(0, 2, 1, 3, 4)


def _uniform(g: torch.Generator | None, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


# ----------------------------------------------------------------------------------------------
# Resampling and blur
# ----------------------------------------------------------------------------------------------


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every frame (reflect padding); sigma in pixels, 0 = identity."""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    b, c = x.shape[:2]
    im = _images(x)
    im = F.conv2d(F.pad(im, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    im = F.conv2d(F.pad(im, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return _videos(im, b)


def downscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Box (area) downscaling by an integer factor: an anti-aliased camera-like resampling."""
    b = x.shape[0]
    return _videos(F.avg_pool2d(_images(x), factor), b)


def upscale_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upscaling of every frame to ``size`` (H, W): the plain super-resolution baseline."""
    b = x.shape[0]
    return _videos(F.interpolate(_images(x), size=size, mode="bicubic", align_corners=False), b).clamp(-1, 1)


# ----------------------------------------------------------------------------------------------
# Noise and compression
# ----------------------------------------------------------------------------------------------


def gaussian_noise(x: torch.Tensor, std: float, g: torch.Generator | None) -> torch.Tensor:
    """Additive sensor noise, ``std`` in [-1, 1] units (2/255 per 8-bit level)."""
    if std <= 0:
        return x
    return (x + std * torch.randn(x.shape, generator=g).to(x)).clamp(-1, 1)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Every frame through a JPEG encode/decode at ``quality`` (1..95), 4:2:0 chroma as cameras store it."""
    b = x.shape[0]
    im = to_uint8(_images(x))  # (B*F H W 3)
    out = []
    for frame in im:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=int(quality))
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return _videos(to_float(np.stack(out)).permute(1, 0, 2, 3).to(x), b)


def h264(x: torch.Tensor, crf: int) -> torch.Tensor:
    """Each clip through an H.264 encode/decode (libx264, constant rate factor ``crf``; 51 = worst)."""
    out = []
    for clip in x:  # (c F H W)
        frames = to_uint8(clip.permute(1, 0, 2, 3))  # (F H W 3)
        h, w = frames.shape[1:3]
        # yuv420p needs even sizes: pad by edge replication and crop back after decoding.
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        fd, tmp = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
        try:
            with imageio.get_writer(tmp, fps=12, codec="libx264", quality=None, macro_block_size=1,
                                    output_params=["-crf", str(int(crf)), "-preset", "ultrafast"]) as writer:
                for frame in frames:
                    writer.append_data(frame)
            with imageio.get_reader(tmp, format="FFMPEG") as reader:
                decoded = np.stack([np.asarray(f)[:h, :w, :3] for f in reader])[: len(frames)]
        finally:
            os.unlink(tmp)
        out.append(to_float(decoded).to(x))
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# Neural-rendering artefacts (enhancement)
# ----------------------------------------------------------------------------------------------


def colour_shift(x: torch.Tensor, strength: float, g: torch.Generator | None) -> torch.Tensor:
    """Per-clip, per-channel gain and offset (white balance and exposure errors of a renderer)."""
    if strength <= 0:
        return x
    b, c = x.shape[:2]
    gain = 1.0 + strength * _uniform(g, b, c, 1, 1, 1, lo=-1.0, hi=1.0)
    offset = strength * _uniform(g, b, c, 1, 1, 1, lo=-1.0, hi=1.0)
    return (x * gain.to(x) + offset.to(x)).clamp(-1, 1)


def ghosting(x: torch.Tensor, strength: float, max_shift: int, g: torch.Generator | None) -> torch.Tensor:
    """Blend each clip with a copy of itself displaced by a per-clip offset (double images)."""
    if strength <= 0 or max_shift <= 0:
        return x
    out = []
    for clip in x:
        dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
        if dy == 0 and dx == 0:
            dx = max_shift
        out.append((1 - strength) * clip + strength * torch.roll(clip, shifts=(dy, dx), dims=(-2, -1)))
    return torch.stack(out)


def floaters(x: torch.Tensor, count: int, opacity: float, g: torch.Generator | None) -> torch.Tensor:
    """Semi-transparent blurry blobs that drift slowly across a clip (NeRF / 3DGS 'floaters')."""
    if count <= 0 or opacity <= 0:
        return x
    b, c, f, h, w = x.shape
    yy = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    t = torch.arange(f, dtype=torch.float32).view(f, 1, 1)
    out = []
    for clip in x:
        alpha = torch.zeros(f, h, w)
        colour = torch.zeros(c, f, h, w)
        for _ in range(count):
            cy, cx = float(_uniform(g, 1) * h), float(_uniform(g, 1) * w)
            vy, vx = (_uniform(g, 2, lo=-0.5, hi=0.5) * min(h, w) / max(f, 1) * 0.3).tolist()
            radius = float(_uniform(g, 1, lo=0.04, hi=0.12)) * min(h, w)
            rgb = _uniform(g, c, lo=-1.0, hi=1.0).view(c, 1, 1, 1)
            d2 = (yy - (cy + vy * t)) ** 2 + (xx - (cx + vx * t)) ** 2  # (F H W)
            a = opacity * torch.exp(-d2 / (2 * radius**2))
            colour = colour * (1 - a) + rgb * a
            alpha = alpha + a * (1 - alpha)
        # 'over' compositing: colour is premultiplied by alpha, so the blobs lie over the frame.
        out.append(clip * (1 - alpha.to(x)) + colour.to(x))
    return torch.stack(out).clamp(-1, 1)
