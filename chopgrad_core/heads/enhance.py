"""Enhancement of neural renderings: degraded render in, clean video out.

Conditioning: the latents of the degraded render are the transformer's input channels. Data:
degraded-render / clean pairs from folders (``data.degraded_root``), or, for the embedded default,
a synthetic degradation of clean video standing for a neural renderer's artefacts: blur, ghosting
(double images), floaters (drifting semi-transparent blobs) and colour shifts. The baseline is the
degraded render itself.

Shape legend: B batch, c channels, F frames, H W size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chopgrad_core.errors import HeadConfigError
from chopgrad_core.heads import degrade as D
from chopgrad_core.heads.restoration import Head, HeadConfig, Sample


@dataclass(kw_only=True)
class EnhanceConfig(HeadConfig):
    """Enhancement (``configs/finetune/task/enhance.yaml``); the synthetic degradation's strengths."""

    name: str = "enhance"
    """The task."""
    blur_sigma: float = 0.8
    """Gaussian blur in pixels (0 = none)."""
    ghost_strength: float = 0.3
    """Weight of the displaced copy blended in (0 = no ghosting)."""
    ghost_shift: int = 3
    """Largest displacement of the ghost, in pixels."""
    floaters: int = 2
    """Floaters per clip (0 = none)."""
    floater_opacity: float = 0.6
    """Peak opacity of a floater."""
    colour_shift: float = 0.1
    """Largest per-channel gain deviation and offset (0 = none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.blur_sigma, self.ghost_strength, self.ghost_shift, self.floaters, self.floater_opacity,
               self.colour_shift) < 0 or self.ghost_strength >= 1 or self.floater_opacity > 1:
            raise HeadConfigError(
                f"task.blur_sigma={self.blur_sigma}, task.ghost_shift={self.ghost_shift}, task.floaters={self.floaters}"
                f", task.colour_shift={self.colour_shift} must be >= 0, task.ghost_strength={self.ghost_strength} in "
                f"[0, 1) and task.floater_opacity={self.floater_opacity} in [0, 1]; change the one out of range")


class EnhanceHead(Head):
    name = "enhance"
    baseline_name = "degraded render"
    config: EnhanceConfig

    def render_artefacts(self, clean: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        x = D.gaussian_blur(clean, cfg.blur_sigma)
        x = D.ghosting(x, cfg.ghost_strength, cfg.ghost_shift, g)
        x = D.floaters(x, cfg.floaters, cfg.floater_opacity, g)
        return D.colour_shift(x, cfg.colour_shift, g)

    def degrade(self, clean: torch.Tensor, g: torch.Generator | None) -> Sample:
        return self.prepare(self.render_artefacts(clean, g))
