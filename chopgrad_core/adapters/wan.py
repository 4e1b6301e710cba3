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

Strips: residual blocks, upsamplers and the head are local (3x3 convolutions, per-pixel RMS
norms), so a block run on a strip of rows plus a 2-row halo computes the strip's interior exactly;
in a recomputation context large blocks run strip by strip in the forward as well as the backward.

Cache offload (``streams_cache``): slots are read in index order (``feat_idx`` only grows), so a
group fetches its host-resident slots in that order on a side stream, a block ahead of the block
that reads them, and each block waits only for its own; the slots a group writes at a cut go to
host memory right after the block writes them. Checkpoint offload (:class:`_CheckpointSaver`):
what a recomputed block keeps for backward goes to host memory too, its input as the strips' row
ranges, and comes back one strip (one block for the slots) ahead of the backward pass.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import (CACHE_T, WanCausalConv3d, WanResample,
                                                              WanResidualBlock, WanRMS_norm, WanUpBlock, unpatchify)

from chopgrad_core.decoder import (CacheOffloader, CausalCache, CausalDecoder, Group, StripPlan, grad_only,
                                   grad_only_conv, strip_rows)
from chopgrad_core.memory import RecomputePlan


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
        io = self._io
        if offload is not None:  # slots waiting in host memory come back a block ahead of their reader
            io.slots, io.pending = slots, [(k, t) for k, t in enumerate(slots) if offload.holds(k, t)]
        io.offload, io.store = offload, store
        try:
            if not io.per_block:  # plain decode: no per-block hooks, so all slots are waited for up front
                io.ready(range(len(slots)))
            x = self.vae.post_quant_conv(z)
            frames = self.vae.decoder(x, feat_cache=slots, feat_idx=[0], first_chunk=group.index == 0)
        finally:
            io.offload, io.store, io.slots, io.pending = None, False, None, []
            io.from_host.clear()
        if store and not io.per_block:
            with torch.no_grad():
                slots = [offload.store(k, t) if isinstance(t, torch.Tensor) else t for k, t in enumerate(slots)]
        if self.patch_size > 1:
            frames = unpatchify(frames, patch_size=self.patch_size)
        return self._finish(frames), CausalCache(slots)

    def _modules_used(self) -> torch.nn.Module:
        return torch.nn.ModuleList([self.vae.post_quant_conv, self.vae.decoder])

    def full_resolution_map(self, num_latent_frames: int) -> tuple[int, int]:
        decoder = self.vae.decoder
        return decoder.conv_out.in_channels, 4 if num_latent_frames > 1 else 1

    def window_done(self) -> None:
        if self._io.saver is not None:
            self._io.saver.clear()

    @contextlib.contextmanager
    def recomputation(self, plan: RecomputePlan | int = 1, offloader: CacheOffloader | None = None) -> Iterator[None]:
        if isinstance(plan, int):
            plan = RecomputePlan(strips=plan)
        decoder = self.vae.decoder
        # Every upsampler doubles the rows: the decoded frame is 2^(number of upsamplers) latent rows.
        ups = sum(1 for m in decoder.modules() if isinstance(m, WanResample) and m.mode.startswith("upsample"))
        strips = StripPlan(plan, 2**ups)
        io = self._io
        if offloader is not None:
            # Slots fetched from host are saved as their host copy in any case (no copy back);
            # block inputs go to host memory only with offload_checkpoints.
            io.saver = _CheckpointSaver(offloader, plan.offload_min_bytes if plan.offload_checkpoints else None)
        patched = []
        for module in decoder.modules():
            # ``last``: the block's last convolution, whose output nothing in the block reads.
            if isinstance(module, WanResidualBlock):
                num_slots, scale = 2, 1  # conv1, conv2 (conv_shortcut is 1x1x1 and keeps no cache)
                last = module.conv2
            elif isinstance(module, WanResample) and module.mode.startswith("upsample"):
                num_slots, scale = (1 if module.mode == "upsample3d" else 0), 2  # time_conv
                last = module.resample[-1]  # nearest 2x, then this 3x3 conv
            else:
                continue
            module.forward = _recomputed(list(module.parameters()), module.forward, num_slots, scale, strips, io,
                                         last)
            patched.append(module)
        # The head (norm_out, SiLU, conv_out) runs at full resolution with fp32 norm temporaries;
        # left to plain autograd it would hold more than any block, so it is a block too.
        head_params = list(decoder.norm_out.parameters()) + list(decoder.conv_out.parameters())
        head = _recomputed(head_params, functools.partial(_head, decoder), 1, 1, strips, io, decoder.conv_out)
        decoder.forward = functools.partial(_decoder_forward, decoder, head, strips, io)
        patched.append(decoder)
        if LEAN_FORWARD:  # every forward here is ours (no-grad strips, recomputation, kept blocks)
            for module in decoder.modules():
                if isinstance(module, WanCausalConv3d):
                    module.forward = functools.partial(_lean_causal_conv, module)
                elif isinstance(module, WanRMS_norm):
                    module.forward = functools.partial(_lean_rms_norm, module)
                else:
                    continue
                patched.append(module)
        io.per_block = True
        try:
            yield
        finally:
            io.per_block = False
            io.saver = None
            for module in patched:
                del module.forward  # back to the class's forward


# ----------------------------------------------------------------------------------------------
# Recomputation
# ----------------------------------------------------------------------------------------------

#: Inside :meth:`WanDecoder.recomputation` the causal convolutions pad spatially inside the
#: convolution and the RMS norms reduce straight from their input (:func:`_lean_causal_conv`,
#: :func:`_lean_rms_norm`): the same arithmetic with fewer passes over each map, for the recomputed
#: forward, whose copies and norms are memory-bound. Exact on the CPU (tests); on one H200
#: (benchmarks/RESULTS.md, issue 15 part h) ``low_memory`` goes from 1.37-1.38x to 1.28-1.29x plain
#: D=0 at 480x832 and from 1.46-1.48x to 1.37x at 896x1600 (17 to 241 frames), 0.35 GiB lower.
#: False: diffusers' modules as they are.
LEAN_FORWARD = True


def _lean_causal_conv(conv: WanCausalConv3d, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """``WanCausalConv3d.forward`` (diffusers 0.42.1) with the spatial zero padding done by the
    convolution instead of ``F.pad`` on its input: the same sums, one padded copy of the input fewer.
    The causal (front) padding in time stays a concatenation with the cached frames (and zeros)."""
    p = list(conv._padding)  # (w, w, h, h, 2t, 0), symmetric in space
    if cache_x is not None and p[4] > 0:
        x = torch.cat([cache_x.to(x.device), x], dim=2)
        p[4] -= cache_x.shape[2]
    if p[4] > 0:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, p[4], 0))
    if getattr(conv, "grad_only", False):  # the last conv of a block's recomputation (decoder.grad_only)
        return grad_only_conv(conv, x, padding=(0, p[2], p[0]))
    return torch.nn.functional.conv3d(x, conv.weight, conv.bias, conv.stride, (0, p[2], p[0]), conv.dilation,
                                      conv.groups)


def _lean_rms_norm(norm: WanRMS_norm, x: torch.Tensor) -> torch.Tensor:
    """``WanRMS_norm.forward`` (diffusers 0.42.1) in fewer passes: the fp32 norm is reduced straight
    from ``x`` (no fp32 copy of the map; half precision is upcast per element, as ``x.float()`` did),
    the division promotes to fp32 as before, and a zero bias is not added. Same values: ``x / |x|``
    rounded to x's dtype, times ``scale``, times ``gamma``."""
    dim = 1 if norm.channel_first else -1
    n = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    y = (x / n.clamp_min(1e-12)).to(x.dtype) * norm.scale * norm.gamma
    if isinstance(norm.bias, float) and norm.bias == 0.0:
        return y
    return y + norm.bias


# Rows of context a strip needs so that its interior is exact: a residual block stacks two 3x3
# convolutions (2 rows); an upsampler's 3x3 convolution after 2x nearest upsampling needs 1 input
# row; the head's conv_out needs 1.
_HALO = 2


def _decoder_forward(decoder, head, plan: StripPlan, io: _SlotIO, x, feat_cache=None, feat_idx=[0],  # noqa: B006
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
        if type(up_block) is WanUpBlock:
            # WanUpBlock.forward inline: called as a module, its caller's reference would keep the
            # block's input (a full-resolution map for the last block) alive through all its resnets.
            for block in [*up_block.resnets, *(up_block.upsamplers or [])]:
                x = block(x, feat_cache=feat_cache, feat_idx=feat_idx)
        else:
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


def _recomputed(params: list[torch.nn.Parameter], forward, num_slots: int, scale: int, plan: StripPlan,
                io: _SlotIO, last: torch.nn.Module):
    """``forward(x, feat_cache, feat_idx)`` of a Wan block, recomputed in backward with explicit cache slots.

    ``scale``: output rows per input row (2 for upsamplers). ``last``: the block's last convolution,
    which the recomputation runs for its gradients only (:func:`grad_only`).
    """

    def recomputed_forward(x, feat_cache=None, feat_idx=[0]):  # noqa: B006 - mirrors diffusers
        if feat_cache is None:
            return forward(x, feat_cache=feat_cache, feat_idx=feat_idx)
        i = feat_idx[0]
        io.ready(range(i, i + num_slots), start=i)
        if torch.is_grad_enabled() and not plan.keep(x.shape[-2]):
            slots_in = feat_cache[i : i + num_slots]
            # Slots fetched from host memory for this group: the block saves the host copy.
            hosts = []
            for j, t in enumerate(slots_in):
                dev, host = io.from_host.pop(i + j, (None, None))
                hosts.append(host if dev is t and io.save_host_copies else None)
            y, *slots_out = _RecomputedBlock.apply((forward, last), num_slots, scale, plan, io, hosts, x, *slots_in,
                                                   *params)
            feat_cache[i : i + num_slots] = slots_out  # the restore: the block's writes, as it made them
            feat_idx[0] = i + num_slots
        else:  # no gradient, or a kept block (selective recomputation): plain autograd
            y = forward(x, feat_cache=feat_cache, feat_idx=feat_idx)
        feat_cache[i : i + num_slots] = io.put(i, feat_cache[i : i + num_slots])
        return y

    return recomputed_forward


_FETCH_AHEAD = 2  # slots fetched beyond the ones a block reads (a residual block reads two)


class _SlotIO:
    """Where the slots of the group being decoded come from and go to, when a cache is offloaded.

    Slots are read in index order, so each block waits only for its own slots' fetch (started when
    the group began), and with ``store`` the slots a block writes go to host memory right after it.
    ``from_host`` maps a slot index to (device copy, host copy) for slots fetched this group, so a
    recomputed block saves the host copy for its backward instead of keeping the device one.
    """

    #: A block without slots starts the next block's fetch (False: as before, it started none).
    ahead_of_slotless = True
    #: A recomputed block saves the host copy of a slot fetched from host memory (False: the device
    #: copy stays alive until backward, which then fetches nothing; more device memory).
    save_host_copies = True

    def __init__(self) -> None:
        self.offload: CacheOffloader | None = None
        self.store = False
        self.per_block = False  # inside recomputation(): every slot user calls ready/put
        self.from_host: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.slots: list | None = None  # the slot list of the group being decoded
        self.pending: list[tuple[int, torch.Tensor]] = []  # (slot, host copy) not yet fetched, in read order
        self.saver: _CheckpointSaver | None = None  # offloads what recomputed blocks save

    def ready(self, keys, start: int | None = None) -> None:
        """Slots ``keys`` are about to be read: fetch them (and the next block's) and wait for them.

        ``start``: the block's first slot index, so that a block with no slots of its own (the
        spatial upsamplers) still starts the next block's fetch before it computes."""
        if self.offload is None:
            return
        keys = list(keys)
        if self.pending:
            # Two slots past these: the next block's slots copy while this block computes, so the
            # input cache is on the device a block at a time, not all of it from the group's start.
            # (Counted from ``start`` for a block without slots: from its keys alone nothing was
            # fetched ahead of a 2D upsampler, and the first full-resolution block waited for its
            # slots' whole copy.)
            last = max(keys, default=-1 if (start is None or not self.ahead_of_slotless) else start - 1)
            limit = last + _FETCH_AHEAD
            n = next((j for j, (k, _) in enumerate(self.pending) if k > limit), len(self.pending))
            batch, self.pending = self.pending[:n], self.pending[n:]
            for (k, host), dev in zip(batch, self.offload.fetch(batch)):
                self.slots[k] = dev
                self.from_host[k] = (dev, host)  # a recomputed block saves the host copy, not the device one
        for k in keys:
            self.offload.ready(k)

    def put(self, i: int, slots: list) -> list:
        if not self.store:
            return slots
        with torch.no_grad():  # the host copy is a cut: nothing flows back through it
            return [self.offload.store(i + j, t) if isinstance(t, torch.Tensor) else t for j, t in enumerate(slots)]


class _CheckpointSaver:
    """What recomputed blocks keep for backward (input map, cache slots), held in host memory.

    Forward pushes one record per block, in order; backward runs the blocks in reverse. A block
    recomputed in strips stores its input map as the strips' row ranges (halo included), so its
    backward fetches one strip ahead of the strip it recomputes, not the whole map; its slots come
    back whole, and the record backward runs next starts copying while the block's last strip
    runs. So the device holds about one strip of input maps and two blocks of slots instead of a
    whole group's checkpoints. Tensors below ``min_bytes`` stay on the device; slots that already
    have a host copy (the window's input cache) are not copied again: their host buffer survives
    until the backward pass (the offloader's ring).
    """

    #: Start the next block's fetch at this block's first strip (True) or at its last (False). Off: on one
    #: H200 (896x1600, 17 frames, with ``_SlotIO.ahead_of_slotless``) it moved 1.56x plain D=0 to 1.55x and
    #: the peak 6.88 -> 7.14 GiB (benchmarks/RESULTS.md, issue 15 part g).
    early_start = False

    def __init__(self, offloader: CacheOffloader, min_bytes: int | None) -> None:
        self.offloader, self.min_bytes = offloader, min_bytes  # None: nothing copied to host
        self.records: dict[int, dict] = {}
        self.fetched: dict[tuple, tuple] = {}  # (n, part) -> (event key or None, device tensor)
        self.count = 0

    def _keep(self, key, t: torch.Tensor, host: torch.Tensor | None = None, size: int | None = None) -> tuple:
        if host is not None:
            return ("host", host)
        if self.min_bytes is not None and (size or t.numel() * t.element_size()) >= self.min_bytes:
            return ("host", self.offloader.store(key, t, ring=1))
        return ("device", t)

    def push(self, x: torch.Tensor, rows: list[tuple[int, int]] | None, slots: list, hosts: list) -> int:
        """Record a block's input ``x`` (as the row ranges ``rows``, or whole) and input slots."""
        n = self.count
        self.count += 1
        with torch.no_grad():
            if rows is None or self.min_bytes is None:  # whole (sliced per strip in backward)
                xs = [self._keep(("ckpt", n, "x"), x)]
            else:  # the whole map's size decides, not a piece's
                size = x.numel() * x.element_size()
                xs = [self._keep(("ckpt", n, "x", k), x[..., c0:c1, :].contiguous(), size=size)
                      for k, (c0, c1) in enumerate(rows)]
            ss = [self._keep(("ckpt", n, j), t, host) if isinstance(t, torch.Tensor) else (None, t)
                  for j, (t, host) in enumerate(zip(slots, hosts))]
        self.records[n] = dict(x=xs, slots=ss)
        return n

    def _fetch(self, n: int, part) -> None:
        kind, t = self.records[n]["x"][part] if isinstance(part, int) else self.records[n]["slots"][part[1]]
        if kind == "host":
            key = ("ckpt-in", n, part)
            self.fetched[(n, part)] = (key, self.offloader.fetch([(key, t)])[0])
        else:
            self.fetched[(n, part)] = (None, t)

    def _get(self, n: int, part):
        if (n, part) not in self.fetched:
            self._fetch(n, part)
        key, t = self.fetched.pop((n, part))
        if key is not None:
            self.offloader.ready(key)
        return t

    def _start(self, n: int) -> None:
        """Start fetching what block ``n``'s backward needs first: its slots and first input piece."""
        for j in range(len(self.records[n]["slots"])):
            if (n, ("s", j)) not in self.fetched:
                self._fetch(n, ("s", j))
        if (n, 0) not in self.fetched:
            self._fetch(n, 0)

    def slots(self, n: int) -> list:
        return [self._get(n, ("s", j)) for j in range(len(self.records[n]["slots"]))]

    def piece(self, n: int, k: int, rows: slice, last: bool) -> torch.Tensor:
        """Rows ``rows`` (strip ``k``) of block ``n``'s input; starts the copy of what backward needs next."""
        record = self.records[n]
        if len(record["x"]) == 1:  # stored whole: fetched with the first strip, sliced for each
            if k == 0:
                record["whole"] = self._get(n, 0)
            t = record["whole"][..., rows, :]
        else:
            t = self._get(n, k)
            if not last:
                self._fetch(n, k + 1)
        if k == 0 or last:
            # The block before this one runs backward next: its slots and first input piece start
            # copying with this block's last strip, or with ``early_start`` its first, so the copy
            # has this block's whole backward to hide behind (a full-resolution block's two slots,
            # 1.1 GB at 896x1600, copy in about two strips' recomputation there); the device then
            # holds them from the first strip on.
            following = [m for m in self.records if m < n]
            if following and ((k == 0 and self.early_start) or (last and not self.early_start)):
                self._start(max(following))
            if last:
                del self.records[n]
        return t

    def clear(self) -> None:
        for key, _ in self.fetched.values():  # fetched but never used (a block no loss reached)
            if key is not None:
                self.offloader.ready(key)
        self.fetched.clear()
        self.records.clear()
        self.count = 0


def _run_block(forward, num_slots: int, x: torch.Tensor, slots_in) -> tuple:
    # The block sees only its own slots, starting at index 0, in a private list: running it
    # again in backward reads exactly the slots it read the first time (the snapshot).
    local, idx = list(slots_in), [0]
    y = forward(x, feat_cache=local, feat_idx=idx)
    assert idx[0] == num_slots, f"block used {idx[0]} cache slots, expected {num_slots}"
    return y, local


_strip_rows = functools.partial(strip_rows, halo=_HALO)


def _forward_in_strips(forward, num_slots: int, scale: int, strips: int, x: torch.Tensor, slots_in) -> tuple:
    """The block's output and written slots, computed strip by strip (no gradient): exact interiors."""
    if strips == 1:
        return _run_block(forward, num_slots, x, slots_in)
    rows = x.shape[-2]
    y, slots_out = None, None
    for r0, r1, c0, c1 in _strip_rows(rows, strips):
        sc = [t[..., c0:c1, :] if isinstance(t, torch.Tensor) else t for t in slots_in]
        yc, sc_out = _run_block(forward, num_slots, x[..., c0:c1, :], sc)
        if y is None:  # shapes from the first strip, rows from the whole map
            y = yc.new_empty((*yc.shape[:-2], rows * scale, yc.shape[-1]))
            slots_out = [t.new_empty((*t.shape[:-2], rows, t.shape[-1])) if isinstance(t, torch.Tensor) else t
                         for t in sc_out]
        y[..., r0 * scale : r1 * scale, :] = yc[..., (r0 - c0) * scale : (r1 - c0) * scale, :]
        for acc, t in zip(slots_out, sc_out):
            if isinstance(t, torch.Tensor):
                acc[..., r0:r1, :] = t[..., r0 - c0 : r1 - c0, :]
        del yc, sc_out
    return y, slots_out


class _RecomputedBlock(torch.autograd.Function):
    """Activation checkpointing of one Wan block, with its cache slots as explicit inputs/outputs.

    Forward runs without saving activations, in horizontal strips (:class:`StripPlan`) where the
    block is large. Backward recomputes the block and pulls the output gradients through it in the
    same strips, each recomputed on its rows plus ``_HALO`` rows of context: the blocks are local
    (3x3 convolutions, per-pixel norms), so every strip's interior, and hence the output and the
    summed gradient, is exact, while only one strip's activations live at a time. What backward
    needs (the input map, the input slots) is kept on the device or, with a
    :class:`_CheckpointSaver`, in host memory. Gradients that do not flow (a detached next cache)
    stay ``None`` rather than becoming zero tensors to back-propagate.
    """

    @staticmethod
    def forward(ctx, forward_last, num_slots, scale, plan, io, hosts, x, *inputs):
        (forward, ctx.last), slots_in, params = forward_last, inputs[:num_slots], inputs[num_slots:]
        strips = plan.count(x.shape[-2] * scale)
        with torch.no_grad():
            y, slots_out = _forward_in_strips(forward, num_slots, scale, strips, x, slots_in)
        ctx.set_materialize_grads(False)
        ctx.forward, ctx.num_slots, ctx.strips = forward, num_slots, strips
        # Non-tensor slots (None before the first group, the "Rep" sentinel) pass through as they were.
        ctx.sentinels = [None if isinstance(t, torch.Tensor) else t for t in slots_in]
        ctx.slot_is_tensor = [isinstance(t, torch.Tensor) for t in slots_in]
        ctx.out_is_tensor = [isinstance(t, torch.Tensor) for t in slots_out]
        ctx.saver = io.saver
        if io.saver is not None:
            rows = [(c0, c1) for _, _, c0, c1 in _strip_rows(x.shape[-2], strips)] if strips > 1 else None
            ctx.record = io.saver.push(x, rows, list(slots_in), hosts)
            ctx.rows = x.shape[-2]
        else:
            ctx.save_for_backward(x, *(t for t in slots_in if isinstance(t, torch.Tensor)))
        ctx.params = params
        return (y, *slots_out)

    @staticmethod
    def backward(ctx, grad_y, *grad_slots_out):
        saver = ctx.saver
        if saver is not None:
            x = None  # the input comes back piece by piece
            slots_in = saver.slots(ctx.record)
            slots_in = [t if is_t else None for t, is_t in zip(slots_in, ctx.slot_is_tensor)]
            rows = ctx.rows
        else:
            x, *tensors_in = ctx.saved_tensors
            it = iter(tensors_in)
            slots_in = [next(it) if is_t else None for is_t in ctx.slot_is_tensor]  # None: not a tensor
            rows = x.shape[-2]
        params = [p for p in ctx.params if p.requires_grad]
        need_x = ctx.needs_input_grad[6]
        need_slots = [t is not None and ctx.needs_input_grad[7 + j] for j, t in enumerate(slots_in)]
        grads_out = [(grad_y, True)] + [(g, is_t) for g, is_t in zip(grad_slots_out, ctx.out_is_tensor)]
        whole = ctx.strips == 1
        grad_x = grad_slots = None
        grad_params = [None] * len(params)
        strips = list(_strip_rows(rows, ctx.strips))
        for k, (r0, r1, c0, c1) in enumerate(strips):
            if saver is not None:
                xc = saver.piece(ctx.record, k, slice(c0, c1), k == len(strips) - 1)
            else:
                xc = x if whole else x[..., c0:c1, :]
            xc = xc.detach().requires_grad_(need_x)
            sc = [(t if whole else t[..., c0:c1, :]).detach().requires_grad_(need) if t is not None else sentinel
                  for t, need, sentinel in zip(slots_in, need_slots, ctx.sentinels)]
            # Backward runs with grad off: the recomputation and the interior slices need it on. The
            # block's output is only differentiated, so its last convolution computes no values.
            with torch.enable_grad():
                with grad_only(ctx.last):
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
                grad_x = xc.new_zeros((*xc.shape[:-2], rows, xc.shape[-1])) if need_x else None
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
        return (None, None, None, None, None, None, grad_x, *grad_slots, *grads_params)
