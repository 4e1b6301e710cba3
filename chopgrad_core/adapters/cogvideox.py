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
import functools
from typing import Iterator

import torch
from diffusers import AutoencoderKLCogVideoX
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXResnetBlock3D
from diffusers.models.upsampling import CogVideoXUpsample3D
from torch.utils._pytree import tree_flatten, tree_unflatten

from chopgrad_core.decoder import CacheOffloader, CausalCache, CausalDecoder, Group
from chopgrad_core.memory import RecomputePlan


def _pixel_frames(num_latent: int) -> int:
    return 1 + 4 * (num_latent - 1) if num_latent % 2 == 1 else 4 * num_latent


class CogVideoXDecoder(CausalDecoder):
    family = "cogvideox"

    def __init__(self, vae: AutoencoderKLCogVideoX, *, clamp: bool = False) -> None:
        super().__init__(vae, clamp=clamp)
        self._saved: _SavedOnHost | None = None

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

    def full_resolution_map(self, num_latent_frames: int) -> tuple[int, int]:
        frames = self.groups(num_latent_frames)[-1]
        return self.vae.decoder.conv_out.conv.in_channels, frames.pixel.stop - frames.pixel.start

    def window_done(self) -> None:
        if self._saved is not None:
            self._saved.clear()

    @contextlib.contextmanager
    def recomputation(self, plan: RecomputePlan | int = 1, offloader: CacheOffloader | None = None) -> Iterator[None]:
        """Every resnet, upsampler and the head recomputed in backward, with their caches explicit.

        Diffusers' own checkpointing wraps the up blocks *and* their resnets, so a resnet's forward
        ran three times; here each block is checkpointed once (one extra forward). Blocks take and
        return their cache, so checkpointing them is exact as they are. With
        ``plan.offload_checkpoints`` what the checkpoints save (block inputs, input caches) waits
        in host memory until backward. Group norms span the whole frame group: no strips here.
        """
        if isinstance(plan, int):
            plan = RecomputePlan(strips=plan)
        decoder = self.vae.decoder
        patched = []
        for module in decoder.modules():
            if isinstance(module, (CogVideoXResnetBlock3D, CogVideoXUpsample3D)):
                module.forward = functools.partial(_checkpointed, module.forward, list(module.parameters()))
                patched.append(module)
        head_params = list(decoder.norm_out.parameters()) + list(decoder.conv_out.parameters())
        head = functools.partial(_checkpointed, functools.partial(_head, decoder), head_params)
        decoder.forward = functools.partial(_decoder_forward, decoder, head)
        patched.append(decoder)
        hooks = contextlib.nullcontext()
        if plan.offload_checkpoints and offloader is not None:
            self._saved = _SavedOnHost(offloader, plan.offload_min_bytes)
            hooks = torch.autograd.graph.saved_tensors_hooks(self._saved.pack, self._saved.unpack)
        try:
            with hooks:
                yield
        finally:
            self._saved = None
            for module in patched:
                del module.forward


# ----------------------------------------------------------------------------------------------
# Recomputation
# ----------------------------------------------------------------------------------------------


def _drop_unread(cache):
    """A cache dict without the 1x1x1 convolutions' entries (``conv_y``/``conv_b`` of the spatial
    norms): diffusers stores their whole input (kernel 1 keeps ``inputs[:, :, 0:]``) but never reads
    it, and at full resolution those copies are most of the cache. Exact."""
    if isinstance(cache, dict):
        return {k: (None if k in ("conv_y", "conv_b") else _drop_unread(v)) for k, v in cache.items()}
    return cache


def _decoder_forward(decoder, head, sample, temb=None, conv_cache=None):
    """``CogVideoXDecoder3D.forward`` (diffusers 0.42.1) with blocks checkpointed one level deep."""
    new_conv_cache = {}
    conv_cache = conv_cache or {}
    x, new_conv_cache["conv_in"] = decoder.conv_in(sample, conv_cache=conv_cache.get("conv_in"))
    blocks = [("mid_block", decoder.mid_block)] + [(f"up_block_{i}", b) for i, b in enumerate(decoder.up_blocks)]
    for key, block in blocks:
        # The blocks' own loops inline, so no caller keeps a block's input alive through it.
        caches, old = {}, conv_cache.get(key) or {}
        for i, resnet in enumerate(block.resnets):
            x, caches[f"resnet_{i}"] = resnet(x, temb, sample, conv_cache=old.get(f"resnet_{i}"))
        for upsampler in getattr(block, "upsamplers", None) or []:
            x = upsampler(x)
        new_conv_cache[key] = caches
    x, new_conv_cache["norm_out"], new_conv_cache["conv_out"] = head(
        x, sample, conv_cache.get("norm_out"), conv_cache.get("conv_out"))
    return x, new_conv_cache


def _head(decoder, x, sample, norm_cache, conv_cache):
    x, norm_cache = decoder.norm_out(x, sample, conv_cache=norm_cache)
    x = decoder.conv_act(x)
    x, conv_cache = decoder.conv_out(x, conv_cache=conv_cache)
    return x, norm_cache, conv_cache


def _checkpointed(forward, params, *args, **kwargs):
    """``forward(*args, **kwargs)``, recomputed in backward when gradients are on (:class:`_Checkpoint`)."""
    if not torch.is_grad_enabled():
        return _drop_unread(forward(*args, **kwargs))
    flat, spec = tree_flatten((args, kwargs))
    is_t = [isinstance(t, torch.Tensor) for t in flat]
    box: dict = {}
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    outs = _Checkpoint.apply(forward, spec, flat, is_t, box, len(tensors), *tensors, *params)
    it = iter(outs)
    return tree_unflatten([next(it) if t else v for t, v in zip(box["is_t"], box["leaves"])], box["spec"])


class _Checkpoint(torch.autograd.Function):
    """One block run without saving activations, recomputed in backward; inputs, caches and
    parameters explicit (the engine takes parameter gradients with ``torch.autograd.grad``)."""

    @staticmethod
    def forward(ctx, forward, spec, flat, is_t, box, num_tensors, *inputs):
        tensors, ctx.params = inputs[:num_tensors], inputs[num_tensors:]
        with torch.no_grad():
            out = _drop_unread(forward(*_unflatten(spec, flat, is_t, tensors)[0],
                                       **_unflatten(spec, flat, is_t, tensors)[1]))
        leaves, out_spec = tree_flatten(out)
        box.update(spec=out_spec, leaves=leaves, is_t=[isinstance(t, torch.Tensor) for t in leaves])
        # Only the non-tensor arguments stay in ctx: a tensor kept here would pin the block's input
        # on the device past the saved-tensor hooks that move it to host memory.
        ctx.forward, ctx.spec, ctx.is_t = forward, spec, is_t
        ctx.flat = [None if t else v for t, v in zip(is_t, flat)]
        ctx.out_is_t = box["is_t"]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors)
        return tuple(t for t in leaves if isinstance(t, torch.Tensor))

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[6:]
        tensors = [t.detach().requires_grad_(need) for t, need in zip(saved, needs)]
        params = [p for p, need in zip(ctx.params, needs[len(saved):]) if need]
        _PACKING[0] = False  # the recomputation's own saved tensors stay on the device
        try:
            with torch.enable_grad():
                args, kwargs = _unflatten(ctx.spec, ctx.flat, ctx.is_t, tensors)
                leaves = tree_flatten(_drop_unread(ctx.forward(*args, **kwargs)))[0]
        finally:
            _PACKING[0] = True
        outs = [t for t in leaves if isinstance(t, torch.Tensor)]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        wrt = [t for t in tensors if t.requires_grad] + params
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
                   if pairs and wrt else [None] * len(wrt))
        grad_tensors = [next(got) if t.requires_grad else None for t in tensors]
        grad_params = [next(got) if need else None for need in needs[len(saved):]]
        return (None, None, None, None, None, None, *grad_tensors, *grad_params)


def _unflatten(spec, flat, is_t, tensors):
    it = iter(tensors)
    return tree_unflatten([next(it) if t else v for t, v in zip(is_t, flat)], spec)


_PACKING = [True]  # off while a checkpoint recomputes in backward


class _SavedOnHost:
    """``saved_tensors_hooks`` that keep large saved tensors (checkpoint inputs) in host memory."""

    def __init__(self, offloader: CacheOffloader, min_bytes: int) -> None:
        self.offloader, self.min_bytes, self.count = offloader, min_bytes, 0

    def pack(self, t: torch.Tensor):
        if not _PACKING[0] or t.numel() * t.element_size() < self.min_bytes:
            return t
        key = ("saved", self.count)
        self.count += 1
        with torch.no_grad():
            return key, self.offloader.store(key, t.detach(), ring=1), t.requires_grad

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        key, host, _ = packed
        dev = self.offloader.fetch([(("saved-in",) + key, host)])[0]
        self.offloader.ready(("saved-in",) + key)
        return dev

    def clear(self) -> None:
        self.count = 0
