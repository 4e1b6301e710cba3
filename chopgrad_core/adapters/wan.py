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
The head (norm_out, SiLU, conv_out), inline code in ``WanDecoder3d.forward``, becomes such a block
too: at full resolution its fp32 norm temporaries were the largest thing alive in backward.

Cache offload (``streams_cache``): slots are read in index order (``feat_idx`` only grows), so a
group fetches its host-resident slots in that order on a side stream and each block waits only for
its own; the slots a group writes at a cut go to host memory right after the block writes them.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import CACHE_T, WanResample, WanResidualBlock, unpatchify

from chopgrad_core.decoder import CacheOffloader, CausalCache, CausalDecoder, Group


class WanDecoder(CausalDecoder):
    family = "wan"
    streams_cache = True

    def __init__(self, vae: AutoencoderKLWan, *, clamp: bool = True) -> None:
        super().__init__(vae, clamp=clamp)
        self.patch_size = vae.config.patch_size or 1
        self._num_slots = vae._cached_conv_counts["decoder"]
        self._io = _SlotIO()

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

    def decode_group(self, z: torch.Tensor, cache: CausalCache, group: Group, *, consume: bool = False,
                     offload: CacheOffloader | None = None, store: bool = False) -> tuple[torch.Tensor, CausalCache]:
        # The decoder writes its new slots into this list. A copy leaves the given cache untouched;
        # a taken list lets each old slot go as soon as it is overwritten (a cache is ~2 GB at 480p).
        slots = cache.take() if consume else list(cache.state)
        if offload is not None:  # slots waiting in host memory start back now, in the order they are read
            held = [(k, t) for k, t in enumerate(slots) if offload.holds(k, t)]
            for (k, _), dev in zip(held, offload.fetch(held)):
                slots[k] = dev
        io = self._io
        io.offload, io.store = offload, store
        try:
            if not io.per_block:  # plain decode: no per-block hooks, so all slots are waited for up front
                io.ready(range(len(slots)))
            x = self.vae.post_quant_conv(z)
            frames = self.vae.decoder(x, feat_cache=slots, feat_idx=[0], first_chunk=group.index == 0)
        finally:
            io.offload, io.store = None, False
        if store and not io.per_block:
            with torch.no_grad():
                slots = [offload.store(k, t) if isinstance(t, torch.Tensor) else t for k, t in enumerate(slots)]
        if self.patch_size > 1:
            frames = unpatchify(frames, patch_size=self.patch_size)
        return self._finish(frames), CausalCache(slots)

    def _modules_used(self) -> torch.nn.Module:
        return torch.nn.ModuleList([self.vae.post_quant_conv, self.vae.decoder])

    @contextlib.contextmanager
    def recomputation(self, strips: int = 1) -> Iterator[None]:
        decoder = self.vae.decoder
        # Every upsampler doubles the rows: the decoded frame is 2^(number of upsamplers) latent rows.
        ups = sum(1 for m in decoder.modules() if isinstance(m, WanResample) and m.mode.startswith("upsample"))
        plan = _StripPlan(strips, 2**ups)
        patched = []
        for module in decoder.modules():
            if isinstance(module, WanResidualBlock):
                num_slots = 2  # conv1, conv2 (conv_shortcut is 1x1x1 and keeps no cache)
            elif isinstance(module, WanResample) and module.mode.startswith("upsample"):
                num_slots = 1 if module.mode == "upsample3d" else 0  # time_conv
            else:
                continue
            module.forward = _recomputed(list(module.parameters()), module.forward, num_slots, plan, self._io)
            patched.append(module)
        # The head (norm_out, SiLU, conv_out) runs at full resolution with fp32 norm temporaries;
        # left to plain autograd it would hold more than any block, so it is a block too.
        head_params = list(decoder.norm_out.parameters()) + list(decoder.conv_out.parameters())
        head = _recomputed(head_params, functools.partial(_head, decoder), 1, plan, self._io)
        decoder.forward = functools.partial(_decoder_forward, decoder, head, plan, self._io)
        patched.append(decoder)
        self._io.per_block = True
        try:
            yield
        finally:
            self._io.per_block = False
            for module in patched:
                del module.forward  # back to the class's forward


# ----------------------------------------------------------------------------------------------
# Recomputation
# ----------------------------------------------------------------------------------------------

# Rows of context a strip needs so that its interior is exact: a residual block stacks two 3x3
# convolutions (2 rows); an upsampler's 3x3 convolution after 2x nearest upsampling needs 1 input
# row; the head's conv_out needs 1.
_HALO = 2


class _StripPlan:
    """How many strips a block is recomputed in: ``strips`` at the output resolution, fewer below.

    A strip is at most ``ceil(H / strips)`` rows of the block's output (H = the decoded frame
    height), so the full-resolution blocks, which hold most of the activations, get ``strips``
    strips, half-resolution blocks half as many, and the low-resolution blocks, whose activations
    are small and whose strips would be mostly halo and launch overhead, run whole.
    """

    def __init__(self, strips: int, upscale: int) -> None:
        self.strips, self.upscale = strips, upscale
        self.max_rows: int | None = None  # set per decoded group: rows of an output strip

    def set_latent_rows(self, rows: int) -> None:
        self.max_rows = -(-rows * self.upscale // self.strips)

    def count(self, out_rows: int) -> int:
        return 1 if self.max_rows is None else max(1, -(-out_rows // self.max_rows))


def _decoder_forward(decoder, head, plan: _StripPlan, io: _SlotIO, x, feat_cache=None, feat_idx=[0],  # noqa: B006
                     first_chunk=False):
    """``WanDecoder3d.forward`` (diffusers 0.42.1) with the head as a recomputed block."""
    if feat_cache is None:
        return type(decoder).forward(decoder, x, feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=first_chunk)
    plan.set_latent_rows(x.shape[-2])
    i = feat_idx[0]
    io.ready([i])
    x = _cached_conv(decoder.conv_in, x, feat_cache, feat_idx)
    feat_cache[i : i + 1] = io.put(i, feat_cache[i : i + 1])
    x = decoder.mid_block(x, feat_cache=feat_cache, feat_idx=feat_idx)
    for up_block in decoder.up_blocks:
        x = up_block(x, feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=first_chunk)
    return head(x, feat_cache=feat_cache, feat_idx=feat_idx)


def _head(decoder, x, feat_cache=None, feat_idx=[0]):  # noqa: B006
    x = decoder.nonlinearity(decoder.norm_out(x))
    return _cached_conv(decoder.conv_out, x, feat_cache, feat_idx)


def _cached_conv(conv, x, feat_cache, feat_idx):
    """A causal conv with its cache slot, as ``WanDecoder3d.forward`` runs conv_in and conv_out."""
    idx = feat_idx[0]
    cache_x = x[:, :, -CACHE_T:].clone()
    if cache_x.shape[2] < 2 and feat_cache[idx] is not None:
        cache_x = torch.cat([feat_cache[idx][:, :, -1:].to(cache_x.device), cache_x], dim=2)
    x = conv(x, feat_cache[idx])
    feat_cache[idx] = cache_x
    feat_idx[0] += 1
    return x


def _recomputed(params: list[torch.nn.Parameter], forward, num_slots: int, plan: _StripPlan, io: _SlotIO):
    """``forward(x, feat_cache, feat_idx)`` of a Wan block, recomputed in backward with explicit cache slots."""

    def recomputed_forward(x, feat_cache=None, feat_idx=[0]):  # noqa: B006 - mirrors diffusers
        if feat_cache is None:
            return forward(x, feat_cache=feat_cache, feat_idx=feat_idx)
        i = feat_idx[0]
        io.ready(range(i, i + num_slots))
        if torch.is_grad_enabled():
            y, *slots_out = _RecomputedBlock.apply(forward, num_slots, plan, len(params), x,
                                                   *feat_cache[i : i + num_slots], *params)
            feat_cache[i : i + num_slots] = slots_out  # the restore: the block's writes, as it made them
            feat_idx[0] = i + num_slots
        else:
            y = forward(x, feat_cache=feat_cache, feat_idx=feat_idx)
        feat_cache[i : i + num_slots] = io.put(i, feat_cache[i : i + num_slots])
        return y

    return recomputed_forward


class _SlotIO:
    """Where the slots of the group being decoded come from and go to, when a cache is offloaded.

    Slots are read in index order, so each block waits only for its own slots' fetch (started when
    the group began), and with ``store`` the slots a block writes go to host memory right after it.
    """

    def __init__(self) -> None:
        self.offload: CacheOffloader | None = None
        self.store = False
        self.per_block = False  # inside recomputation(): every slot user calls ready/put

    def ready(self, keys) -> None:
        if self.offload is not None:
            for k in keys:
                self.offload.ready(k)

    def put(self, i: int, slots: list) -> list:
        if not self.store:
            return slots
        with torch.no_grad():  # the host copy is a cut: nothing flows back through it
            return [self.offload.store(i + j, t) if isinstance(t, torch.Tensor) else t for j, t in enumerate(slots)]


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
    gradients through it in horizontal strips (:class:`_StripPlan`), each recomputed on its rows
    plus ``_HALO`` rows of context: the blocks are local (3x3 convolutions, per-pixel norms), so
    every strip's interior, and hence the summed gradient, is exact, while only one strip's
    activations live at a time. Gradients that do not flow (a detached next cache) stay ``None``
    rather than becoming zero tensors to back-propagate.
    """

    @staticmethod
    def forward(ctx, forward, num_slots, plan, num_params, x, *inputs):
        slots_in, params = inputs[:num_slots], inputs[num_slots:]
        with torch.no_grad():
            y, slots_out = _run_block(forward, num_slots, x, slots_in)
        ctx.set_materialize_grads(False)
        ctx.forward, ctx.num_slots = forward, num_slots
        ctx.strips = plan.count(y.shape[-2])
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
        need_slots = [t is not None and ctx.needs_input_grad[5 + j] for j, t in enumerate(slots_in)]
        grads_out = [(grad_y, True)] + [(g, is_t) for g, is_t in zip(grad_slots_out, ctx.out_is_tensor)]
        rows = x.shape[-2]
        whole = ctx.strips == 1
        grad_x = grad_slots = None
        grad_params = [None] * len(params)
        step = -(-rows // ctx.strips)
        for r0 in range(0, rows, step):
            r1 = min(r0 + step, rows)
            c0, c1 = (0, rows) if whole else (max(0, r0 - _HALO), min(rows, r1 + _HALO))
            xc = (x if whole else x[..., c0:c1, :]).detach().requires_grad_(need_x)
            sc = [(t if whole else t[..., c0:c1, :]).detach().requires_grad_(need) if t is not None else sentinel
                  for t, need, sentinel in zip(slots_in, need_slots, ctx.sentinels)]
            # Backward runs with grad off: the recomputation and the interior slices need it on.
            with torch.enable_grad():
                yc, sc_out = _run_block(ctx.forward, ctx.num_slots, xc, sc)
                scale = yc.shape[-2] // (c1 - c0)  # 2 for upsamplers
                outs, grads = [], []
                for n, (out, (g, is_t)) in enumerate(zip([yc, *sc_out], grads_out)):
                    if not is_t or g is None or not out.requires_grad:
                        continue  # no gradient flows here (e.g. into a detached next cache)
                    s = scale if n == 0 else 1
                    outs.append(out if whole else out[..., (r0 - c0) * s : (r1 - c0) * s, :])
                    grads.append(g if whole else g[..., r0 * s : r1 * s, :])
            inputs = ([xc] if need_x else []) + [t for t in sc if isinstance(t, torch.Tensor) and t.requires_grad]
            inputs += params
            if not inputs or not outs:
                continue
            got = list(torch.autograd.grad(outs, inputs, grads, allow_unused=True))
            del outs, yc, sc_out
            gx = got.pop(0) if need_x else None
            gs = [got.pop(0) if need else None for need in need_slots]
            if whole:
                grad_x, grad_slots, grad_params = gx, gs, got
                break
            if grad_x is None:
                grad_x = torch.zeros_like(x) if need_x else None
                grad_slots = [torch.zeros_like(t) if need else None for t, need in zip(slots_in, need_slots)]
            if gx is not None:
                grad_x[..., c0:c1, :] += gx
            for acc, g in zip(grad_slots, gs):
                if g is not None:
                    acc[..., c0:c1, :] += g
            grad_params = [g if acc is None else (acc if g is None else acc + g) for acc, g in zip(grad_params, got)]
        grad_slots = grad_slots or [None] * len(slots_in)
        it_p = iter(grad_params)
        grads_params = [next(it_p) if p.requires_grad else None for p in ctx.params]
        return (None, None, None, None, grad_x, *grad_slots, *grads_params)
