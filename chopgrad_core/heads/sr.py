"""Video super-resolution head: bicubic baseline, corrected by a one-step Wan transformer.

Conditioning: the latents of the low-resolution video (bicubic-upscaled to the output grid, the
size the VAE encodes at) are the transformer's input channels. Degradation (training): Gaussian
blur, box downscaling by ``scale``, sensor noise, JPEG per frame and/or H.264 per clip, each
configurable. Loss recipe: the shared latent + ChopGrad pixel loss on the output.

Shape legend: B batch, c channels, F frames, H W output size, h w input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from chopgrad_core.errors import HeadConfigError, ShapeError
from chopgrad_core.heads import degrade as D
from chopgrad_core.heads.restoration import Head, HeadConfig, Sample


@dataclass(kw_only=True)
class SRConfig(HeadConfig):
    """Super-resolution (``configs/finetune/task/sr.yaml``)."""

    name: str = "sr"
    """The task."""
    scale: int = 2
    """Upscaling factor: 2 or 4."""
    blur_sigma: float = 0.5
    """Gaussian blur before downscaling, in output pixels (0 = none)."""
    noise_std: float = 0.1
    """Sensor noise added to the low-resolution frames, in [-1, 1] units (0 = none)."""
    jpeg_quality: Optional[int] = 60
    """JPEG quality applied to every low-resolution frame (1..95); null = none."""
    h264_crf: Optional[int] = None
    """H.264 constant rate factor applied to each low-resolution clip (0..51, 51 worst); null = none."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale not in (2, 4):
            raise HeadConfigError(f"task.scale={self.scale} must be 2 or 4")
        if self.blur_sigma < 0 or self.noise_std < 0:
            raise HeadConfigError(f"task.blur_sigma={self.blur_sigma} and task.noise_std={self.noise_std} must be >= 0")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            raise HeadConfigError(f"task.jpeg_quality={self.jpeg_quality} must be in 1..95 or null")
        if self.h264_crf is not None and not 0 <= self.h264_crf <= 51:
            raise HeadConfigError(f"task.h264_crf={self.h264_crf} must be in 0..51 or null")


class SRHead(Head):
    name = "sr"
    baseline_name = "bicubic"
    config: SRConfig

    def low_resolution(self, clean: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """The degradation pipeline: blur -> downscale -> noise -> JPEG -> H.264."""
        cfg = self.config
        h, w = clean.shape[-2:]
        if h % cfg.scale or w % cfg.scale:
            raise ShapeError(f"frames of {h}x{w} are not divisible by task.scale={cfg.scale}")
        x = D.downscale(D.gaussian_blur(clean, cfg.blur_sigma), cfg.scale)
        x = D.gaussian_noise(x, cfg.noise_std, g)
        if cfg.jpeg_quality is not None:
            x = D.jpeg(x, cfg.jpeg_quality)
        if cfg.h264_crf is not None:
            x = D.h264(x, cfg.h264_crf)
        return x

    def degrade(self, clean: torch.Tensor, g: torch.Generator | None) -> Sample:
        return self.prepare(self.low_resolution(clean, g))

    def prepare(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> Sample:
        h, w = input.shape[-2:]
        return Sample(input=input, baseline=D.upscale_bicubic(input, (h * self.config.scale, w * self.config.scale)))
