"""Video inpainting head: fill a masked region.

Conditioning: the latents of the masked video (missing pixels set to ``fill``) concatenated with
one mask channel on the latent grid (the fraction of each latent cell that is missing). Masks: a
fixed central region covering half the height and width, random free-form strokes (thick random
polylines, held over the clip), or masks from a folder (images, frame folders or mp4s; white =
missing; one image applies to every frame). The baseline is the masked input; the output keeps
the known pixels and takes the model's prediction inside the mask.

Shape legend: B batch, c channels, F frames, H W size, T latent frames, h w latent size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from chopgrad_core.errors import HeadConfigError, ShapeError
from chopgrad_core.heads.restoration import Head, HeadConfig, Sample, pool_to_latent
from chopgrad_core.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoError, is_frame_folder, read_video

MASKS = ("center", "strokes", "folder")


@dataclass(kw_only=True)
class InpaintConfig(HeadConfig):
    """Inpainting (``configs/finetune/task/inpaint.yaml``)."""

    name: str = "inpaint"
    """The task."""
    mask: str = "center"
    """center (half height and width, centred), strokes (random free-form) or folder (mask_folder)."""
    mask_folder: Optional[str] = None
    """Folder of masks (images, frame folders or mp4s; white = missing) for mask=folder."""
    strokes: int = 4
    """Free-form strokes per clip (mask=strokes)."""
    stroke_width: float = 0.12
    """Stroke thickness as a fraction of the shorter image side (mask=strokes)."""
    fill: float = 0.0
    """Value of missing pixels in the masked input, in [-1, 1] (0 = mid grey)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask not in MASKS:
            raise HeadConfigError(f"task.mask={self.mask!r} is unknown; choose one of {', '.join(MASKS)}")
        if self.mask == "folder" and not self.mask_folder:
            raise HeadConfigError("task.mask=folder needs task.mask_folder=/path/to/masks")
        if self.strokes < 1 or not 0 < self.stroke_width < 1 or not -1 <= self.fill <= 1:
            raise HeadConfigError(f"task.strokes={self.strokes} must be >= 1, task.stroke_width={self.stroke_width} "
                                  f"in (0, 1), task.fill={self.fill} in [-1, 1]; change the one out of range")


# ----------------------------------------------------------------------------------------------
# Masks: (F H W) float, 1 = missing
# ----------------------------------------------------------------------------------------------


def center_mask(frames: int, hw: tuple[int, int]) -> torch.Tensor:
    h, w = hw
    m = torch.zeros(frames, h, w)
    m[:, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 1.0
    return m


def stroke_mask(frames: int, hw: tuple[int, int], strokes: int, width: float, g: torch.Generator | None) -> torch.Tensor:
    """Random free-form strokes (DeepFill v2 style): thick polylines with random turns."""
    h, w = hw
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    thick = max(1, round(width * min(h, w)))
    r = torch.rand(strokes, 12, generator=g).tolist()
    for s in range(strokes):
        x, y = r[s][0] * w, r[s][1] * h
        points = [(x, y)]
        for k in range(4):
            angle = r[s][2 + 2 * k] * 2 * math.pi
            length = (0.15 + 0.25 * r[s][3 + 2 * k]) * min(h, w)
            x = min(max(x + length * math.cos(angle), 0), w - 1)
            y = min(max(y + length * math.sin(angle), 0), h - 1)
            points.append((x, y))
        draw.line(points, fill=255, width=thick, joint="curve")
        for px, py in points:  # round caps
            draw.ellipse([px - thick / 2, py - thick / 2, px + thick / 2, py + thick / 2], fill=255)
    return torch.from_numpy(np.asarray(img) > 127).float().expand(frames, h, w).clone()


def load_mask(path: str | Path) -> torch.Tensor:
    """A mask file or folder as (F_m H W) in {0, 1} (white = missing)."""
    frames = read_video(path)  # VideoError names the file
    return torch.from_numpy(frames.mean(axis=-1) > 127).float()


def fit_mask(mask: torch.Tensor, frames: int, hw: tuple[int, int], source: str) -> torch.Tensor:
    """A (F_m H W) mask for a clip of ``frames`` frames of size ``hw``: one frame applies to all."""
    if tuple(mask.shape[-2:]) != tuple(hw):
        raise ShapeError(f"mask {source} is {mask.shape[-2]}x{mask.shape[-1]} pixels but the video is "
                         f"{hw[0]}x{hw[1]}; masks must have the video's size")
    if mask.shape[0] == 1:
        return mask.expand(frames, *hw)
    if mask.shape[0] < frames:
        raise ShapeError(f"mask {source} has {mask.shape[0]} frames but the video has {frames}; give one mask "
                         "image or at least as many mask frames")
    return mask[:frames]


class InpaintHead(Head):
    name = "inpaint"
    baseline_name = "masked input"
    extra_channels = 1
    config: InpaintConfig

    def __init__(self, config: InpaintConfig) -> None:
        super().__init__(config)
        self._folder: list[tuple[str, torch.Tensor]] | None = None

    def folder_masks(self) -> list[tuple[str, torch.Tensor]]:
        if self._folder is None:
            root = Path(self.config.mask_folder)
            if not root.is_dir():
                raise VideoError(f"task.mask_folder={str(root)!r} does not exist or is not a folder")
            # Each image directly in the folder is one mask (every frame); each mp4 or frame
            # folder inside it is a mask video (frame by frame).
            files = sorted(p for p in root.iterdir() if (p.is_file() and p.suffix.lower() in
                                                         IMAGE_SUFFIXES + VIDEO_SUFFIXES) or is_frame_folder(p))
            if not files:
                raise VideoError(f"task.mask_folder={str(root)!r} holds no mask images or videos")
            self._folder = [(repr(str(p)), load_mask(p)) for p in files]
        return self._folder

    def make_mask(self, batch: int, frames: int, hw: tuple[int, int], g: torch.Generator | None) -> torch.Tensor:
        """(B 1 F H W) masks as configured."""
        cfg, out = self.config, []
        for _ in range(batch):
            if cfg.mask == "center":
                m = center_mask(frames, hw)
            elif cfg.mask == "strokes":
                m = stroke_mask(frames, hw, cfg.strokes, cfg.stroke_width, g)
            else:
                masks = self.folder_masks()
                source, m = masks[int(torch.randint(len(masks), (1,), generator=g))]
                m = fit_mask(m, frames, hw, source)
            out.append(m)
        return torch.stack(out).unsqueeze(1)

    def mask_input(self, clean: torch.Tensor, mask: torch.Tensor) -> Sample:
        masked = clean * (1 - mask) + self.config.fill * mask
        return Sample(input=masked, baseline=masked, mask=mask)

    def degrade(self, clean: torch.Tensor, g: torch.Generator | None) -> Sample:
        b, _, f, h, w = clean.shape
        return self.mask_input(clean, self.make_mask(b, f, (h, w), g).to(clean))

    def prepare(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> Sample:
        b, _, f, h, w = input.shape
        if mask is None:
            mask = self.make_mask(b, f, (h, w), torch.Generator().manual_seed(0))
        return self.mask_input(input, mask.to(input))

    def extras(self, sample: Sample, latent_shape: tuple[int, ...]) -> torch.Tensor:
        return pool_to_latent(sample.mask, latent_shape[2], tuple(latent_shape[-2:]))  # (B 1 T h w)

    def finish(self, output: torch.Tensor, sample: Sample) -> torch.Tensor:
        return output * sample.mask + sample.input * (1 - sample.mask)
