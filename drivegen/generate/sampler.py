"""Flow-matching sampling with diffusers' ``FlowMatchEulerDiscreteScheduler``, separate from the model.

Shape legend: B batch, K cameras, C latent channels, t latent frames, h w latent size.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


@torch.no_grad()
def sample_latents(model, control_BKCthw: torch.Tensor, cond: dict, shape_BKCthw: tuple[int, ...],
                   image_hw: tuple[int, int], *, steps: int = 20, seed: int = 0, shift: float = 3.0) -> torch.Tensor:
    """Integrate the learned velocity from noise (sigma 1) to data (sigma 0); normalised latents out."""
    # 1. Noise from a seeded CPU generator: the same seed gives the same video on any device.
    device = control_BKCthw.device
    x = torch.randn(shape_BKCthw, generator=torch.Generator().manual_seed(seed)).to(device)
    # 2. The schedule: Wan's shifted sigmas.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps, device=device)
    # 3. Euler steps on the velocity field.
    for t in scheduler.timesteps:
        velocity = model(x, t.expand(x.shape[0]).float(), control_BKCthw, cond, image_hw)
        x = scheduler.step(velocity.float(), t, x).prev_sample
    return x
