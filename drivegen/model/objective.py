"""Training objective: flow matching in latent space (as Wan) plus ChopGrad pixel losses on x0.

Flow matching (rectified flow, the convention of diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x_t = (1 - sigma) * x0 + sigma * noise``, the model predicts the velocity ``noise - x0`` at
timestep ``1000 * sigma``. The x0 estimate ``x_t - sigma * v`` is decoded and compared with the
ground-truth frames in pixels through :func:`chopgrad_core.pixel_loss`, so the decoder's memory
stays constant in clip length; there is no second implementation of truncation here. A one-step
mode (fixed sigma, as the ChopGrad paper's applications) is ``sigma=...``.

Shape legend: B batch, K cameras, C latent channels, T latent frames, h w latent size,
F frames, H W image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import chopgrad_core
from chopgrad_core.config import ChopGradConfig
from drivegen.errors import ConfigError
from drivegen.model.controlled_wan import null_conditions


class LatentSpace:
    """Wan VAE latents <-> the normalised space the transformer works in (as the Wan pipeline)."""

    def __init__(self, vae) -> None:
        c = vae.config.z_dim
        self.mean = torch.tensor(vae.config.latents_mean[:c]).view(1, c, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std[:c]).view(1, c, 1, 1, 1)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean.to(z)) / self.std.to(z)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x) + self.mean.to(x)


@dataclass(kw_only=True)
class ObjectiveConfig:
    """Loss weights and the noise schedule of training (``configs/objective``)."""

    flow_weight: float = 1.0
    """Weight of the latent flow-matching MSE."""
    pixel_weight: float = 0.1
    """Weight of the ChopGrad pixel loss on the decoded x0 estimate; 0 disables decoding."""
    sigma: float | None = None
    """Fixed noise level for one-step training (the paper's setting); None samples sigma."""
    logit_normal: bool = True
    """Sample sigma from a logit-normal (SD3) rather than uniform distribution."""
    control_dropout: float = 0.0
    """Share of batch elements trained with the null condition (no layout, no boxes), so that
    generation can use guidance on the controls (generate's sampler.guidance != 1). Off by
    default: at the embedded scale guidance lowers controllability (val probe mIoU 0.419 at
    guidance 1, 0.198 at 2, 0.131 at 3) and the dropout itself costs some (val mIoU over training
    seeds 0-2: 0.431 with 0.1, 0.440 with 0; benchmarks/RESULTS.md, issue 12). Set 0.1 to train
    for guidance."""

    def __post_init__(self) -> None:
        if self.sigma is not None and not 0.0 < self.sigma <= 1.0:
            raise ConfigError(f"objective.sigma={self.sigma} must be in (0, 1] or null")
        if not 0.0 <= self.control_dropout < 1.0:
            raise ConfigError(f"objective.control_dropout={self.control_dropout} must be in [0, 1)")
        if self.flow_weight < 0 or self.pixel_weight < 0:
            raise ConfigError("objective.flow_weight and objective.pixel_weight must be >= 0")


def sample_sigma(cfg: ObjectiveConfig, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    if cfg.sigma is not None:
        return torch.full((batch,), cfg.sigma)
    u = torch.randn(batch, generator=generator) if cfg.logit_normal else None
    return torch.sigmoid(u) if u is not None else torch.rand(batch, generator=generator).clamp(1e-3, 1.0)


def losses(model, decoder, space: LatentSpace, x0_BKCThw: torch.Tensor, frames_BKcFHW: torch.Tensor,
           control_BKCThw: torch.Tensor, cond: dict[str, Any], cfg: ObjectiveConfig,
           chopgrad: ChopGradConfig | None = None, generator: torch.Generator | None = None,
           rows: slice | None = None, global_batch: int | None = None,
           cameras: slice | None = None) -> dict[str, torch.Tensor]:
    """Flow-matching and pixel losses of one batch; ``total`` is what to back-propagate.

    ``x0`` is in the normalised latent space; ``frames`` are the ground-truth frames in [-1, 1].

    Sharded training (drivegen.train.parallel) passes its share: ``rows`` of a ``global_batch``
    (data parallel: noise, sigma and dropout are drawn for the whole global batch and sliced, so
    every process sees what one process would) and ``cameras`` (camera-parallel ChopGrad: both
    losses cover only these cameras, weighted by their share so the shares add up to the whole;
    ``frames`` then holds only these cameras). Left out, one process computes exactly as before.
    """
    b, k = x0_BKCThw.shape[:2]
    n, rows = (global_batch or b), (rows or slice(0, b))
    sigma = sample_sigma(cfg, n, generator)[rows].to(x0_BKCThw.device)
    noise = torch.randn((n, *x0_BKCThw.shape[1:]), generator=generator)[rows].to(x0_BKCThw)
    s = sigma.view(b, 1, 1, 1, 1, 1)
    x_t = (1 - s) * x0_BKCThw + s * noise
    if cfg.control_dropout > 0:  # some elements see the null condition (classifier-free guidance)
        drop = (torch.rand(n, generator=generator) < cfg.control_dropout)[rows]
        if drop.any():
            null_control, null_cond = null_conditions(control_BKCThw, cond)
            d = drop.to(x0_BKCThw.device)
            control_BKCThw = torch.where(d.view(b, 1, 1, 1, 1, 1), null_control, control_BKCThw)
            cond = dict(cond, box_mask=torch.where(d.view(b, 1, 1, 1), null_cond["box_mask"], cond["box_mask"]))
    velocity = model(x_t, sigma * 1000, control_BKCThw, cond, tuple(frames_BKcFHW.shape[-2:]))
    target, share = noise - x0_BKCThw, 1.0
    if cameras is not None:  # this rank's cameras only
        velocity, target, x_t = velocity[:, cameras], target[:, cameras], x_t[:, cameras]
        share = velocity.shape[1] / k
    out = {"flow": F.mse_loss(velocity.float(), target.float()) * share}
    total = cfg.flow_weight * out["flow"]
    if cfg.pixel_weight > 0:
        x0_hat = (x_t - s * velocity).flatten(0, 1)  # (B*K, C, T, h, w): cameras as batch elements
        out["pixel"] = chopgrad_core.pixel_loss(decoder, space.denormalise(x0_hat.float()).to(x0_hat.dtype),
                                                frames_BKcFHW.flatten(0, 1),
                                                **(chopgrad or ChopGradConfig()).pixel_loss_kwargs()) * share
        total = total + cfg.pixel_weight * out["pixel"]
    out["total"] = total
    return out
