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
    def recomputation(self, strips: int = 1) -> Iterator[None]:
        patched = []
        for module in self.vae.decoder.modules():
            if isinstance(module, WanResidualBlock):
                num_slots = 2  # conv1, conv2 (conv_shortcut is 1x1x1 and keeps no cache)
            elif isinstance(module, WanResample) and module.mode.startswith("upsample"):
                num_slots = 1 if module.mode == "upsample3d" else 0  # time_conv
            else:
                continue
            module.forward = _recomputed(module, module.forward, num_slots, strips)
            patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                del module.forward  # back to the class's forward


# Rows of context a strip needs so that its interior is exact: a residual block stacks two 3x3
# convolutions (2 rows); an upsampler's 3x3 convolution after 2x nearest upsampling needs 1 input row.
_HALO = 2


def _recomputed(module, forward, num_slots: int, strips: int):
    """``forward(x, feat_cache, feat_idx)`` of a Wan block, recomputed in backward with explicit cache slots."""
    params = [p for p in module.parameters()]

    def recomputed_forward(x, feat_cache=None, feat_idx=[0]):  # noqa: B006 - mirrors diffusers
        if feat_cache is None or not torch.is_grad_enabled():
            return forward(x, feat_cache=feat_cache, feat_idx=feat_idx)
        i = feat_idx[0]
        y, *slots_out = _RecomputedBlock.apply(forward, num_slots, strips, len(params), x,
                                               *feat_cache[i : i + num_slots], *params)
        feat_cache[i : i + num_slots] = slots_out  # the restore: the block's writes, as it made them
        feat_idx[0] = i + num_slots
        return y

    return recomputed_forward


def _run_block(forward, num_slots: int, x: torch.Tensor, slots_in) -> tuple:
    # The block sees only its own slots, starting at index 0, in a private list: running it
    # again in backward reads exactly the slots it read the first time (the snapshot).
    local, idx = list(slots_in), [0]
    y = forward(x, feat_cache=local, feat_idx=idx)
    assert idx[0] == num_slots, f"block used {idx[0]} cache slots, expected {num_slots}"
    return y, local


class _RecomputedBlock(torch.autograd.Function):
    """Activation checkpointing of one Wan block, with its cache slots as explicit inputs/outputs.

    Forward runs without saving activations. Backward recomputes the block and pulls the output
    gradients through it in ``strips`` horizontal strips, each recomputed on its rows plus
    ``_HALO`` rows of context: the blocks are local (3x3 convolutions, per-pixel norms), so every
    strip's interior, and hence the summed gradient, is exact, while only one strip's activations
    live at a time.
    """

    @staticmethod
    def forward(ctx, forward, num_slots, strips, num_params, x, *inputs):
        slots_in, params = inputs[:num_slots], inputs[num_slots:]
        with torch.no_grad():
            y, slots_out = _run_block(forward, num_slots, x, slots_in)
        ctx.forward, ctx.num_slots, ctx.strips = forward, num_slots, strips
        # Non-tensor slots (None before the first group, the "Rep" sentinel) pass through as they were.
        ctx.sentinels = [None if isinstance(t, torch.Tensor) else t for t in slots_in]
        ctx.slot_is_tensor = [isinstance(t, torch.Tensor) for t in slots_in]
        ctx.out_is_tensor = [isinstance(t, torch.Tensor) for t in slots_out]
        ctx.save_for_backward(x, *(t for t in slots_in if isinstance(t, torch.Tensor)))
        ctx.params = params
        return (y, *slots_out)

    @staticmethod
    def backward(ctx, grad_y, *grad_slots_out):
        x, *tensors_in = ctx.saved_tensors
        it = iter(tensors_in)
        slots_in = [next(it) if is_t else None for is_t in ctx.slot_is_tensor]  # None: not a tensor
        params = [p for p in ctx.params if p.requires_grad]
        need_x = ctx.needs_input_grad[4]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_slots = [torch.zeros_like(t) if t is not None and ctx.needs_input_grad[5 + j] else None
                      for j, t in enumerate(slots_in)]
        grad_params = [torch.zeros_like(p) for p in params]
        rows = x.shape[-2]
        step = -(-rows // ctx.strips)
        for r0 in range(0, rows, step):
            r1 = min(r0 + step, rows)
            c0, c1 = max(0, r0 - _HALO), min(rows, r1 + _HALO)
            xc = x[..., c0:c1, :].detach().requires_grad_(need_x)
            sc = [t[..., c0:c1, :].detach().requires_grad_(g is not None) if t is not None else sentinel
                  for t, g, sentinel in zip(slots_in, grad_slots, ctx.sentinels)]
            # Backward runs with grad off: the recomputation and the interior slices need it on.
            with torch.enable_grad():
                yc, sc_out = _run_block(ctx.forward, ctx.num_slots, xc, sc)
                scale = yc.shape[-2] // (c1 - c0)  # 2 for upsamplers
                outs = [yc[..., (r0 - c0) * scale : (r1 - c0) * scale, :]]
                grads = [grad_y[..., r0 * scale : r1 * scale, :]]
                for out, g, is_t in zip(sc_out, grad_slots_out, ctx.out_is_tensor):
                    if is_t and g is not None and out.requires_grad:
                        outs.append(out[..., r0 - c0 : r1 - c0, :])
                        grads.append(g[..., r0:r1, :])
            inputs = ([xc] if need_x else []) + [t for t in sc if isinstance(t, torch.Tensor) and t.requires_grad] + params
            if not inputs:
                continue
            got = list(torch.autograd.grad(outs, inputs, grads, allow_unused=True))
            if need_x:
                g = got.pop(0)
                if g is not None:
                    grad_x[..., c0:c1, :] += g
            for acc in grad_slots:
                if acc is not None:
                    g = got.pop(0)
                    if g is not None:
                        acc[..., c0:c1, :] += g
            for acc, g in zip(grad_params, got):
                if g is not None:
                    acc += g
        it_p = iter(grad_params)
        grads_params = [next(it_p) if p.requires_grad else None for p in ctx.params]
        return (None, None, None, None, grad_x, *grad_slots, *grads_params)

