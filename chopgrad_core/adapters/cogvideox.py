"""Adapter for diffusers ``AutoencoderKLCogVideoX``.

What this family does (diffusers 0.42.1, ``AutoencoderKLCogVideoX._decode``):

- groups of 2 latent frames; with an odd frame count the first group takes 3. A group of X latent
  frames decodes to 4X pixel frames, or 1 + 4(X - 1) when X is odd (the first frame is not
  upsampled in time), so 13 latent frames give 49 frames;
- the cache is passed functionally: ``decoder(z, conv_cache=dict) -> (frames, new_dict)``, a nest
  of dicts keyed by block, holding the last ``kernel - 1`` input frames of every causal conv;
- group norms normalise over all frames of the group and the whole image, so spatial tiling of the
  backward pass is a coarser approximation here than for Wan (whose norms are per pixel);
- no clamp on the output.

Recomputation: the blocks already take and return their cache, so diffusers' own gradient
checkpointing is correct here; :meth:`CogVideoXDecoder.recomputation` switches it on for the call.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from diffusers import AutoencoderKLCogVideoX

from chopgrad_core.decoder import CausalCache, CausalDecoder, Group


def _pixel_frames(num_latent: int) -> int:
    return 1 + 4 * (num_latent - 1) if num_latent % 2 == 1 else 4 * num_latent


class CogVideoXDecoder(CausalDecoder):
    family = "cogvideox"

    def __init__(self, vae: AutoencoderKLCogVideoX, *, clamp: bool = False) -> None:
        super().__init__(vae, clamp=clamp)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def spatial_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def out_channels(self) -> int:
        return self.vae.config.out_channels

    def groups(self, num_latent_frames: int) -> list[Group]:
        # Same split as diffusers: max(T // 2, 1) groups, the remainder joins the first.
        per, t = self.vae.num_latent_frames_batch_size, num_latent_frames
        rem = t % per
        groups, pixel = [], 0
        for i in range(max(t // per, 1)):
            start = per * i + (0 if i == 0 else rem)
            stop = per * (i + 1) + rem
            stop = min(stop, t)
            n = _pixel_frames(stop - start)
            groups.append(Group(i, slice(start, stop), slice(pixel, pixel + n)))
            pixel += n
        return groups

    def init_cache(self) -> CausalCache:
        return CausalCache(None)

    def decode_group(self, z: torch.Tensor, cache: CausalCache, group: Group, *,
                     consume: bool = False) -> tuple[torch.Tensor, CausalCache]:
        # The decoder reads the old dict and builds a new one: functional either way.
        state = cache.take() if consume else cache.state
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        frames, new_cache = self.vae.decoder(z, conv_cache=state)
        return self._finish(frames), CausalCache(new_cache)

    def _modules_used(self) -> torch.nn.Module:
        modules = [self.vae.decoder]
        if self.vae.post_quant_conv is not None:
            modules.append(self.vae.post_quant_conv)
        return torch.nn.ModuleList(modules)

    @contextlib.contextmanager
    def recomputation(self, strips: int = 1) -> Iterator[None]:
        # Group norms span the whole frame, so blocks cannot be recomputed strip by strip here.
        was_on = self.vae.is_gradient_checkpointing
        self.vae.enable_gradient_checkpointing()
        try:
            yield
        finally:
            if not was_on:
                self.vae.disable_gradient_checkpointing()
