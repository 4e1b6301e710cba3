"""Video quality metrics of the task heads, their comparison table and strip (written atomically).

- PSNR over a clip (data range 2 for frames in [-1, 1]), in dB; higher is better.
- SSIM (``chopgrad_core.ssim``, Gaussian window), mean over frames; higher is better.
- LPIPS from local weights (``chopgrad_core.lpips``), mean over frames; lower is better; optional.
- Flicker: mean absolute difference between the frame-to-frame changes of the video and those of
  the reference, in 8-bit levels: ``mean |(x[t+1] - x[t]) - (y[t+1] - y[t])|``. Zero when the
  video changes over time exactly as the reference does; temporal noise and popping raise it.

Shape legend: c channels, F frames, H W size (a clip is (c F H W) or (1 c F H W)), N images.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import torch
from PIL import Image, ImageDraw

from chopgrad_core.atomic import write_png
from chopgrad_core.ssim import ssim
from chopgrad_core.video import mosaic, to_uint8

METRICS = ("psnr", "ssim", "lpips", "flicker")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "flicker": False}


def _clip(x: torch.Tensor) -> torch.Tensor:
    """(1 c F H W) or (c F H W) -> (c F H W) float32."""
    return (x[0] if x.dim() == 5 else x).float()


def _images(x: torch.Tensor) -> torch.Tensor:
    """(c F H W) -> (F c H W)."""
    return x.permute(1, 0, 2, 3)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float((_clip(x) - _clip(ref)).square().mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(4.0 / mse))


def ssim_score(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(ssim(_images(_clip(x)), _images(_clip(ref))).mean())


def flicker(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = _clip(x), _clip(ref)
    if x.shape[1] < 2:
        return 0.0
    dx, dr = x[:, 1:] - x[:, :-1], ref[:, 1:] - ref[:, :-1]
    return float((dx - dr).abs().mean()) * 127.5


class Scorer:
    """All metrics of a clip against its reference; LPIPS only when local weights are given."""

    def __init__(self, lpips_weights: str | os.PathLike | None = None) -> None:
        self.lpips = None
        if lpips_weights:
            from chopgrad_core.lpips import LPIPS

            self.lpips = LPIPS.from_local(lpips_weights)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m for m in METRICS if m != "lpips" or self.lpips is not None)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        out = {"psnr": psnr(x, ref), "ssim": ssim_score(x, ref), "flicker": flicker(x, ref)}
        if self.lpips is not None:
            out["lpips"] = float(self.lpips(_images(_clip(x)), _images(_clip(ref))).mean())
        return out


class Table:
    """Mean of every metric per method over clips; rendered as a markdown table."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, method: str, scores: dict[str, float]) -> None:
        for k, v in scores.items():
            self.scores[method][k].append(v)

    def mean(self, method: str, metric: str) -> float:
        return float(np.mean(self.scores[method][metric]))

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {m: {k: self.mean(m, k) for k in self.names} for m in self.scores}

    def render(self, note: str = "") -> str:
        arrows = {k: ("↑" if HIGHER_IS_BETTER[k] else "↓") for k in self.names}
        head = "| method | " + " | ".join(f"{k} {arrows[k]}" for k in self.names) + " |"
        rows = [head, "|---" * (len(self.names) + 1) + "|"]
        for method in self.scores:
            n = len(next(iter(self.scores[method].values())))
            cells = [f"{self.mean(method, k):.4f}" if k in ("ssim", "lpips") else f"{self.mean(method, k):.2f}"
                     for k in self.names]
            rows.append(f"| {method} ({n} clips) | " + " | ".join(cells) + " |")
        return "\n".join(rows) + ("\n" + note if note else "") + "\n"


def comparison_strip(path: str | os.PathLike, rows: dict[str, torch.Tensor], max_frames: int = 5) -> None:
    """A PNG: one labelled row per video (c F H W in [-1, 1], all the same size), frames across."""
    videos = []
    for x in rows.values():
        x = _clip(x)
        idx = np.linspace(0, x.shape[1] - 1, min(max_frames, x.shape[1])).round().astype(int)
        videos.append(to_uint8(_images(x[:, idx]))[None])  # (1 K H W 3)
    grid = mosaic(videos)[0]  # (rows*H, K*W, 3)
    label_w, h = 90, videos[0].shape[2]
    canvas = Image.new("RGB", (grid.shape[1] + label_w, grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (label_w, 0))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(rows):
        draw.text((4, i * (h + 2) + h // 2 - 5), name, fill=(0, 0, 0))
    write_png(path, np.asarray(canvas))
