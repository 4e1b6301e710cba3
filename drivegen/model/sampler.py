"""Flow-matching sampling with diffusers' ``FlowMatchEulerDiscreteScheduler``, separate from the model.

- ``sample_latents``: one clip. Optional guidance on the controls (classifier-free style between
  the real conditions and null ones: v = v_null + g (v_cond - v_null)) and an optional clean
  prefix: latent frames fixed to given values (re-noised to each step's noise level before the
  model sees them, exact at the end), which is how a chunk continues the previous one.
- ``sample_video``: any length, in chunks of the training length that overlap by ``overlap``
  latent frames; each chunk continues from the previous chunk's last latent frames.

Flow-matching convention (diffusers, Wan): x_sigma = (1 - sigma) x0 + sigma noise, the model
predicts noise - x0 at timestep 1000 sigma.

Shape legend: B batch, K cameras, C latent channels, t latent frames, h w latent size, o prefix frames.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from drivegen.errors import ConfigError
from drivegen.model.controlled_wan import null_conditions


@torch.no_grad()
def sample_latents(model, control_BKCthw: torch.Tensor, cond: dict, shape_BKCthw: tuple[int, ...],
                   image_hw: tuple[int, int], *, steps: int = 20, seed: int = 0, shift: float = 3.0,
                   guidance: float = 1.0, prefix_BKCohw: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate the learned velocity from noise (sigma 1) to data (sigma 0); normalised latents out.

    guidance: 1 uses the conditions alone (one model call per step); g != 1 adds a call with
    ``null_conditions`` and extrapolates by g. prefix: clean latents of the first o frames.
    """
    # 1. Noise from a seeded CPU generator: the same seed gives the same video on any device.
    device = control_BKCthw.device
    noise = torch.randn(shape_BKCthw, generator=torch.Generator().manual_seed(seed)).to(device)
    x = noise.clone()
    # 2. The schedule: Wan's shifted sigmas.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps, device=device)
    null = null_conditions(control_BKCthw, cond) if guidance != 1.0 else None
    o = 0 if prefix_BKCohw is None else prefix_BKCohw.shape[3]
    if o:
        prefix = prefix_BKCohw.to(device=device, dtype=x.dtype)
    # 3. Euler steps on the velocity field.
    for i, t in enumerate(scheduler.timesteps):
        if o:  # the known frames at this step's noise level, with their own fixed noise
            sigma = scheduler.sigmas[i].to(device)
            x[:, :, :, :o] = (1 - sigma) * prefix + sigma * noise[:, :, :, :o]
        timestep = t.expand(x.shape[0]).float()
        velocity = model(x, timestep, control_BKCthw, cond, image_hw).float()
        if null is not None:
            v_null = model(x, timestep, null[0], null[1], image_hw).float()
            velocity = v_null + guidance * (velocity - v_null)
        x = scheduler.step(velocity, t, x).prev_sample
    if o:
        x[:, :, :, :o] = prefix
    return x


def chunk_starts(num_latent_frames: int, chunk: int, overlap: int) -> list[int]:
    """First latent frame of each chunk: steps of chunk - overlap; the last chunk ends at the end
    (it overlaps more when the length does not divide)."""
    if not 0 <= overlap < chunk:
        raise ConfigError(f"sampler.overlap={overlap} must be in [0, chunk={chunk}) latent frames")
    if num_latent_frames <= chunk:
        return [0]
    starts = [0]
    while starts[-1] + chunk < num_latent_frames:
        starts.append(min(starts[-1] + chunk - overlap, num_latent_frames - chunk))
    return starts


@torch.no_grad()
def sample_video(model, inputs: Callable[[int, int], tuple[torch.Tensor, dict]], shape_BKChw: tuple[int, ...],
                 num_latent_frames: int, image_hw: tuple[int, int], *, chunk: int, overlap: int = 1,
                 steps: int = 20, seed: int = 0, shift: float = 3.0, guidance: float = 1.0,
                 on_chunk: Callable[[int, int, int], None] | None = None) -> torch.Tensor:
    """Latents (B, K, C, t, h, w) of a video of ``num_latent_frames``, ``chunk`` latent frames at a time.

    ``inputs(start, length)`` gives the (control, cond) of latent frames [start, start + length),
    conditioned as a clip of its own (as in training). Chunk c > 0 starts inside chunk c - 1 and
    keeps the frames they share fixed (``sample_latents``' prefix). Chunk c uses seed
    ``seed + 1_000_003 c``: one chunk is exactly ``sample_latents(..., seed=seed)``.
    """
    b, k, c, h, w = shape_BKChw
    length = min(chunk, num_latent_frames)
    out = None
    end = 0
    starts = chunk_starts(num_latent_frames, length, overlap)
    for i, start in enumerate(starts):
        control, cond = inputs(start, length)
        prefix = out[:, :, :, start:end] if out is not None and end > start else None
        x = sample_latents(model, control, cond, (b, k, c, length, h, w), image_hw, steps=steps,
                           seed=seed + 1_000_003 * i, shift=shift, guidance=guidance, prefix_BKCohw=prefix)
        if out is None:
            out = torch.empty((b, k, c, num_latent_frames, h, w), dtype=x.dtype, device=x.device)
        out[:, :, :, start:start + length] = x
        end = start + length
        if on_chunk is not None:
            on_chunk(i, len(starts), start)
    return out
