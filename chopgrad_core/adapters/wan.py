"""Adapter for diffusers ``AutoencoderKLWan`` (Wan 2.1 and Wan 2.2 configurations).

What this family does (diffusers 0.42.1, ``AutoencoderKLWan._decode``):

- one group per latent frame; latent frame 0 decodes to 1 pixel frame (``first_chunk=True``),
  every later one to 4, so T latent frames give 1 + 4(T-1) frames;
- the cache is a list with one slot per causal conv of the decoder; a slot holds a tensor (the
  last frames of that conv's input), ``None`` before the first group, or the string ``"Rep"``
  (temporal upsamplers on the first group). Diffusers stores slots with ``.clone()``, so a plain
  decode under autograd chains every group to all earlier ones;
- ``post_quant_conv`` is 1x1x1, so applying it per group equals applying it to the whole video;
- Wan 2.2 (``patch_size=2``) decodes to patch channels and unpatchifies at the end; unpatchify acts
  per frame, so per group is the same;
- the output is clamped to [-1, 1].

Recomputation: the decoder's residual blocks and upsamplers write into the shared slot list and
advance ``feat_idx`` as a side effect, so naive activation checkpointing re-runs those writes
against an already-advanced cache (diffusers issue 11071; ``_supports_gradient_checkpointing =
False``). :meth:`WanDecoder.recomputation` checkpoints each such block as a *pure* function of its
input and the cache slots it reads, returning the slots it writes: the snapshot (slots in) is an
argument of the checkpoint, and the restore is writing the returned slots back into the list.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample, WanResidualBlock, unpatchify
from torch.utils.checkpoint import checkpoint

from chopgrad_core.decoder import CausalCache, CausalDecoder, Group


class WanDecoder(CausalDecoder):
    family = "wan"

    def __init__(self, vae: AutoencoderKLWan, *, clamp: bool = True) -> None:
        super().__init__(vae, clamp=clamp)
        self.patch_size = vae.config.patch_size or 1
        self._num_slots = vae._cached_conv_counts["decoder"]

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    @property
    def spatial_scale(self) -> int:
        return self.vae.spatial_compression_ratio

    @property
    def out_channels(self) -> int:
        return self.vae.config.out_channels // (self.patch_size * self.patch_size)

    def groups(self, num_latent_frames: int) -> list[Group]:
        groups = [Group(0, slice(0, 1), slice(0, 1))]
        for i in range(1, num_latent_frames):
            groups.append(Group(i, slice(i, i + 1), slice(1 + 4 * (i - 1), 1 + 4 * i)))
        return groups

    def init_cache(self) -> CausalCache:
        return CausalCache([None] * self._num_slots)

    def decode_group(self, z: torch.Tensor, cache: CausalCache, group: Group, *,
                     consume: bool = False) -> tuple[torch.Tensor, CausalCache]:
        # The decoder writes its new slots into this list. A copy leaves the given cache untouched;
        # a taken list lets each old slot go as soon as it is overwritten (a cache is ~2 GB at 480p).
        slots = cache.take() if consume else list(cache.state)
        x = self.vae.post_quant_conv(z)
        frames = self.vae.decoder(x, feat_cache=slots, feat_idx=[0], first_chunk=group.index == 0)
        if self.patch_size > 1:
            frames = unpatchify(frames, patch_size=self.patch_size)
        return self._finish(frames), CausalCache(slots)

    def _modules_used(self) -> torch.nn.Module:
        return torch.nn.ModuleList([self.vae.post_quant_conv, self.vae.decoder])

    @contextlib.contextmanager
    def recomputation(self) -> Iterator[None]:
        patched = []
        for module in self.vae.decoder.modules():
            if isinstance(module, WanResidualBlock):
                num_slots = 2  # conv1, conv2 (conv_shortcut is 1x1x1 and keeps no cache)
            elif isinstance(module, WanResample) and module.mode.startswith("upsample"):
                num_slots = 1 if module.mode == "upsample3d" else 0  # time_conv
            else:
                continue
            module.forward = _checkpointed(module.forward, num_slots)
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward  # back to the class's forward


def _checkpointed(forward, num_slots: int):
    """``forward(x, feat_cache, feat_idx)`` of a Wan block, checkpointed with explicit cache slots."""

    def pure(x: torch.Tensor, *slots_in):
        # The block sees only its own slots, starting at index 0, in a private list: running it
        # again in backward reads exactly the slots it read the first time.
        local, idx = list(slots_in), [0]
        y = forward(x, feat_cache=local, feat_idx=idx)
        assert idx[0] == num_slots, f"block used {idx[0]} cache slots, expected {num_slots}"
        return (y, *local)

    def checkpointed_forward(x, feat_cache=None, feat_idx=[0]):  # noqa: B006 - mirrors diffusers
        if feat_cache is None or not torch.is_grad_enabled():
            return forward(x, feat_cache=feat_cache, feat_idx=feat_idx)
        i = feat_idx[0]
        y, *slots_out = checkpoint(pure, x, *feat_cache[i : i + num_slots], use_reentrant=False)
        feat_cache[i : i + num_slots] = slots_out  # the restore: the block's writes, as it made them
        feat_idx[0] = i + num_slots
        return y

    return checkpointed_forward
