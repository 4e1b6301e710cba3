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

Recomputation (:meth:`CogVideoXDecoder.recomputation`): the blocks take and return their cache, so
each resnet, upsampler and the head is checkpointed once with its cache explicit. With strips
(``RecomputePlan.strips``, planned by :func:`chopgrad_core.memory.plan_recompute_cogvideox`) large
blocks run and are recomputed in horizontal strips, exactly through the group norms: statistics
first, then the strips; in backward the statistics' gradients take a second pass (the section
"Strips through group norms" below). A resnet's backward takes two strip passes (conv1's output
gradient gathered in a map between them), and where the plan allows (``reuse_stats_pass``) its
forward keeps conv1's output from the statistics pass instead of recomputing it. With ``offload_cache`` the cache streams entry by entry
(:class:`_CacheStream`; where the budget is tight, ``prefetch_cache`` off, the next block's entries are
fetched after a block instead of during it), and checkpoint inputs wait in host memory as the strips' row ranges.

Not here: the upsampler before the first full-resolution resnet is not fused into it, so that
resnet's 256-channel input and its gradient (2 x 5.2 GiB at 848x1600, 8 frames) are whole maps on
the device, the floor of this adapter's peak.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
from diffusers import AutoencoderKLCogVideoX
from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXResnetBlock3D, CogVideoXSpatialNorm3D
from diffusers.models.upsampling import CogVideoXUpsample3D
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from chopgrad_core.decoder import CacheOffloader, CausalCache, CausalDecoder, Group, StripPlan, grad_only, strip_rows
from chopgrad_core.memory import RecomputePlan, plan_recompute_cogvideox


def _pixel_frames(num_latent: int) -> int:
    return 1 + 4 * (num_latent - 1) if num_latent % 2 == 1 else 4 * num_latent


class CogVideoXDecoder(CausalDecoder):
    family = "cogvideox"
    streams_cache = True
    planner = staticmethod(plan_recompute_cogvideox)

    def __init__(self, vae: AutoencoderKLCogVideoX, *, clamp: bool = False) -> None:
        super().__init__(vae, clamp=clamp)
        self._saved: _SavedOnHost | None = None
        self._stream = _CacheStream()

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

    def decode_group(self, z: torch.Tensor, cache: CausalCache, group: Group, *, consume: bool = False,
                     offload: CacheOffloader | None = None, store: bool = False) -> tuple[torch.Tensor, CausalCache]:
        # The decoder reads the old dict and builds a new one: functional either way.
        state = cache.take() if consume else cache.state
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        stream = self._stream
        if stream.active:  # recomputation: _decoder_forward reads the cache entry by entry from the stream
            stream.begin(state, offload, store, consume)
            del state
            try:
                frames, new_cache = self.vae.decoder(z, conv_cache=None)
            finally:
                stream.end()
            return self._finish(frames), CausalCache(new_cache)
        if offload is not None:  # whole cache back at once (no per-block hooks here)
            state = _CacheStream.fetch_entry(offload, (), state, wait=True)
        frames, new_cache = self.vae.decoder(z, conv_cache=state)
        if store:
            new_cache = _CacheStream.store_entry(offload, (), new_cache)
        return self._finish(frames), CausalCache(new_cache)

    def _modules_used(self) -> torch.nn.Module:
        modules = [self.vae.decoder]
        if self.vae.post_quant_conv is not None:
            modules.append(self.vae.post_quant_conv)
        return torch.nn.ModuleList(modules)

    def full_resolution_map(self, num_latent_frames: int) -> tuple[int, int]:
        frames = max(g.pixel.stop - g.pixel.start for g in self.groups(num_latent_frames))  # 9 for an odd count
        return self.vae.decoder.conv_out.conv.in_channels, frames

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
        in host memory until backward. With ``plan.strips`` > 1 the large blocks run and are
        recomputed in horizontal strips, their group norms' statistics taken over the whole frame
        group in a pass of their own (:class:`_StripBlock`).
        """
        if isinstance(plan, int):
            plan = RecomputePlan(strips=plan)
        decoder = self.vae.decoder
        strips = StripPlan(plan, self.spatial_scale)
        patched = []
        for module in decoder.modules():
            if isinstance(module, CogVideoXResnetBlock3D):
                run = _ResnetRun(module)
            elif isinstance(module, CogVideoXUpsample3D):
                run = _UpsampleRun(module)
            else:
                continue
            module.forward = functools.partial(_block, run, strips, self, module.forward, list(module.parameters()))
            patched.append(module)
        head_params = list(decoder.norm_out.parameters()) + list(decoder.conv_out.parameters())
        head = functools.partial(_block, _HeadRun(decoder), strips, self, functools.partial(_head, decoder),
                                 head_params)
        decoder.forward = functools.partial(_decoder_forward, decoder, head, strips, self._stream)
        patched.append(decoder)
        self._stream.active, self._stream.prefetch = True, plan.prefetch_cache
        hooks = contextlib.nullcontext()
        if plan.offload_checkpoints and offloader is not None:
            self._saved = _SavedOnHost(offloader, plan.offload_min_bytes)
            hooks = torch.autograd.graph.saved_tensors_hooks(self._saved.pack, self._saved.unpack)
        try:
            with hooks:
                yield
        finally:
            self._saved = None
            self._stream.active, self._stream.prefetch = False, True
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


def _decoder_forward(decoder, head, strips: StripPlan, stream: _CacheStream, sample, temb=None, conv_cache=None):
    """``CogVideoXDecoder3D.forward`` (diffusers 0.42.1) with blocks checkpointed one level deep and
    the cache read from and written to ``stream`` entry by entry."""
    if conv_cache is not None or stream.tree is None:  # called outside decode_group: the cache as given
        stream.begin(conv_cache, None, False, False)
    strips.set_latent_rows(sample.shape[-2])
    new_conv_cache = {}
    x, entry = decoder.conv_in(sample, conv_cache=stream.get(("conv_in",)))
    new_conv_cache["conv_in"] = stream.put(("conv_in",), entry)
    blocks = [("mid_block", decoder.mid_block)] + [(f"up_block_{i}", b) for i, b in enumerate(decoder.up_blocks)]
    for key, block in blocks:
        # The blocks' own loops inline, so no caller keeps a block's input alive through it.
        caches = new_conv_cache[key] = {}
        for i, resnet in enumerate(block.resnets):
            path = (key, f"resnet_{i}")
            x, entry = resnet(x, temb, sample, conv_cache=stream.get(path))
            caches[f"resnet_{i}"] = stream.put(path, entry)
        for upsampler in getattr(block, "upsamplers", None) or []:
            x = upsampler(x)
    x, entry = head(x, None, sample, conv_cache={"norm_out": stream.get(("norm_out",)),
                                                  "conv_out": stream.get(("conv_out",))})
    new_conv_cache["norm_out"] = stream.put(("norm_out",), entry["norm_out"])
    new_conv_cache["conv_out"] = stream.put(("conv_out",), entry["conv_out"])
    return x, new_conv_cache


class _CacheStream:
    """The cache of the group being decoded, handed to the blocks entry by entry (one resnet's).

    With an offloader, entries waiting in host memory come back one entry ahead of their reader
    (copied on the offloader's side stream while the block before runs; each block waits for its
    own), and with ``store`` the entries a block writes go to host memory right after it. Entries
    are dropped as they are handed out, so the device holds about two entries of the input cache
    instead of all of it (at 848x1600 the whole cache is about 10 GiB). Offloader keys are the
    entries' paths in the cache dict.

    With ``prefetch`` off (``RecomputePlan.prefetch_cache``) the next entry's copy starts when a
    block hands its written entry over (:meth:`put`), after its forward, not when it takes its own
    (:meth:`get`): the first full-resolution resnet of a CogVideoX group peaks in its forward (its
    whole 256-channel input and output maps), and the next resnet's entries (1.3 GiB at 848x1600)
    then arrive after that peak. The kernels are queued by then, so the copy still runs beside them.
    """

    def __init__(self) -> None:
        self.active = False  # inside recomputation(): decode_group streams
        self.prefetch = True  # the next entry's copy starts in get (True) or in put (False)
        self.tree: dict | None = None
        self.offload: CacheOffloader | None = None
        self.store = False
        self.order: list[tuple[str, ...]] = []
        self.fetched: dict[tuple[str, ...], object] = {}
        self.taken: set[tuple[str, ...]] = set()  # entries handed to their block

    def begin(self, tree, offload, store: bool, consume: bool) -> None:
        # Not consumed: the caller keeps the cache (a snapshot), so entries are taken from a copy of its dicts.
        self.tree = {} if tree is None else tree if consume else _copy_dicts(tree)
        self.offload, self.store, self.fetched = offload, store, {}
        self.order, self.taken = [], set()

    def end(self) -> None:
        self.tree, self.offload, self.store, self.fetched, self.order, self.taken = None, None, False, {}, [], set()

    def _take(self, path):
        node = self.tree
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        return node.pop(path[-1], None) if isinstance(node, dict) else None

    def get(self, path: tuple[str, ...]):
        if self.offload is None:
            return self._take(path)
        if not self.order:
            self.order = _read_order_from(self.tree)
        entry = self.fetched.pop(path) if path in self.fetched else self.fetch_entry(self.offload, path,
                                                                                   self._take(path))
        self.taken.add(path)
        if self.prefetch:  # start the next entry's copy, so it arrives while this block runs
            self._fetch_after(path)
        for key, _ in _leaves(entry, path):
            self.offload.ready(key)
        return entry

    def _fetch_after(self, path) -> None:
        if path in self.order:
            i = self.order.index(path)
            nxt = self.order[i + 1] if i + 1 < len(self.order) else None
            if nxt is not None and nxt not in self.fetched and nxt not in self.taken:
                self.fetched[nxt] = self.fetch_entry(self.offload, nxt, self._take(nxt))

    def put(self, path: tuple[str, ...], entry):
        entry = self.store_entry(self.offload, path, entry) if self.store else entry
        if self.offload is not None and not self.prefetch:  # the block has run: its successor's entry now
            self._fetch_after(path)
        return entry

    @staticmethod
    def fetch_entry(offload: CacheOffloader, path, entry, wait: bool = False):
        """``entry`` with its tensors held in host memory on their way back (``wait``: arrived)."""
        items = [(key, t) for key, t in _leaves(entry, path) if offload.holds(key, t)]
        devs = dict(zip((key for key, _ in items), offload.fetch(items)))
        if wait:
            for key in devs:
                offload.ready(key)
        return _map_leaves(lambda key, t: devs.get(key, t), entry, path)

    @staticmethod
    def store_entry(offload: CacheOffloader, path, entry):
        with torch.no_grad():  # the host copy is a cut: nothing flows back through it
            return _map_leaves(lambda key, t: offload.store(key, t), entry, path)


def _read_order_from(tree) -> list[tuple[str, ...]]:
    """Paths of the entries of a cache dict in read order (dicts keep insertion order)."""
    paths = []
    for key, node in (tree or {}).items():
        if key in ("mid_block",) or key.startswith("up_block_"):
            paths += [(key, sub) for sub in (node or {})]
        else:
            paths.append((key,))
    return paths


def _copy_dicts(tree):
    return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _leaves(entry, path):
    if isinstance(entry, torch.Tensor):
        yield ("cog", *path), entry
    elif isinstance(entry, dict):
        for k, v in entry.items():
            yield from _leaves(v, (*path, k))


def _map_leaves(fn, entry, path):
    if isinstance(entry, torch.Tensor):
        return fn(("cog", *path), entry)
    if isinstance(entry, dict):
        return {k: _map_leaves(fn, v, (*path, k)) for k, v in entry.items()}
    return entry


def _head(decoder, x, temb=None, sample=None, conv_cache=None):
    """norm_out, SiLU, conv_out of ``CogVideoXDecoder3D.forward``, called like a resnet (cache as one dict)."""
    x, norm_cache = decoder.norm_out(x, sample, conv_cache=conv_cache.get("norm_out"))
    x = decoder.conv_act(x)
    x, conv = decoder.conv_out(x, conv_cache=conv_cache.get("conv_out"))
    return x, {"norm_out": norm_cache, "conv_out": conv}


def _checkpointed(forward_last, params, *args, **kwargs):
    """``forward(*args, **kwargs)``, recomputed in backward when gradients are on (:class:`_Checkpoint`);
    ``forward_last``: (forward, its last convolution, which the recomputation runs for gradients only)."""
    if not torch.is_grad_enabled():
        return _drop_unread(forward_last[0](*args, **kwargs))
    flat, spec = tree_flatten((args, kwargs))
    is_t = [isinstance(t, torch.Tensor) for t in flat]
    box: dict = {}
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    outs = _Checkpoint.apply(forward_last, spec, flat, is_t, box, len(tensors), *tensors, *params)
    it = iter(outs)
    return tree_unflatten([next(it) if t else v for t, v in zip(box["is_t"], box["leaves"])], box["spec"])


class _Checkpoint(torch.autograd.Function):
    """One block run without saving activations, recomputed in backward; inputs, caches and
    parameters explicit (the engine takes parameter gradients with ``torch.autograd.grad``)."""

    @staticmethod
    def forward(ctx, forward_last, spec, flat, is_t, box, num_tensors, *inputs):
        (forward, ctx.last), tensors, ctx.params = forward_last, inputs[:num_tensors], inputs[num_tensors:]
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
            with torch.enable_grad(), grad_only(ctx.last):  # the output is only differentiated
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

#: ``zq``'s gather indices are made once per shape on the device (False: from CPU tensors every call, as
#: before: three blocking copies, each a stream synchronisation, per spatial norm and strip).
INDEX_ON_DEVICE = True

#: A resnet run in strips pulls its gradient back in two strip passes, conv1's output gradient gathered
#: in a map between them (:meth:`_StripBlock._backward`); False: three passes, conv1 twice (as before).
SPLIT_RESNET_BACKWARD = True


class _SavedOnHost:
    """``saved_tensors_hooks`` that keep large saved tensors (checkpoint inputs) in host memory.

    Blocks run in strips also register their pieces (:meth:`add`), in forward order, so that a
    block's backward, at its last strip, starts copying the first strip of the strip block whose
    backward comes next (the one before it in forward order): that copy then runs beside compute
    instead of stalling the next block's start.
    """

    #: A strip block's backward starts the next strip block's first strip copying (False: each strip
    #: block's first strip is fetched when its backward starts, and the GPU waits for it).
    ahead_of_block = True
    #: A block's pass over its strips starts its next pass's first strip at its last strip (False: the
    #: next pass fetches its first strip when it starts).
    across_passes = True

    def __init__(self, offloader: CacheOffloader, min_bytes: int) -> None:
        self.offloader, self.min_bytes, self.count = offloader, min_bytes, 0
        self.records: list[list] = []  # strip blocks' pieces, forward order
        self.ahead: dict[int, list] = {}  # record -> its first strip's copies, started

    def add(self, pieces: list) -> int:
        self.records.append(pieces)
        return len(self.records) - 1

    def first_strip(self, record: int) -> list:
        """Record ``record``'s first strip: its copies if already started, else started now."""
        return self.ahead.pop(record, None) or [self.start(p) for p in self.records[record][0]]

    def start_next(self, record: int) -> None:
        """Block ``record``'s backward is ending: start the next strip block's first strip."""
        if self.ahead_of_block and record > 0 and record - 1 not in self.ahead:
            self.ahead[record - 1] = [self.start(p) for p in self.records[record - 1][0]]

    def pack(self, t: torch.Tensor, size: int | None = None):
        """``t`` itself, or a handle to its host copy when ``size`` (default: its own bytes) is large."""
        if not _PACKING[0] or (size or t.numel() * t.element_size()) < self.min_bytes:
            return t
        key = ("saved", self.count)
        self.count += 1
        with torch.no_grad():
            return key, self.offloader.store(key, t.detach(), ring=1), t.requires_grad

    def start(self, packed):
        """Start copying a packed tensor back; :meth:`finish` waits for it."""
        if isinstance(packed, torch.Tensor):
            return packed
        key, host, _ = packed
        key = ("saved-in",) + key
        return key, self.offloader.fetch([(key, host)])[0]

    def finish(self, handle) -> torch.Tensor:
        if isinstance(handle, torch.Tensor):
            return handle
        key, dev = handle
        self.offloader.ready(key)
        return dev

    def unpack(self, packed):
        return self.finish(self.start(packed))

    def clear(self) -> None:
        for handles in self.ahead.values():  # started for a block whose backward did not run: wait
            for h in handles:  # for the copies before their device memory can be reused
                self.finish(h)
        self.ahead.clear()
        self.records.clear()
        self.count = 0


# ----------------------------------------------------------------------------------------------
# Strips through group norms
# ----------------------------------------------------------------------------------------------
#
# A CogVideoX group norm normalises over a group of channels, all frames of the frame group and the
# whole image, so a strip cannot normalise itself. A norm is a per-pixel affine map once its
# statistics (mean, rstd per batch element and group) are known, and the rest of a block is local
# (3x3 convolutions, nearest upsampling), so a block runs exactly in strips with halos in two
# passes: the statistics first (from the block input, or from a prefix of the block run strip by
# strip and discarded), then the strips with those statistics as inputs. Backward is exact too:
# the strips' backward gives the gradient w.r.t. the statistics as well (summed over strips); a
# statistic is a full-frame reduction of the norm's input h, so its gradient reaches h as
# dL/dh = g_mean / N - g_rstd * rstd^3 * (h - mean) / N (per group), pulled through the block's
# prefix strip by strip in a second pass (for the first norm, whose input is the block input, an
# elementwise term). Norms are handled last to first: a later norm's prefix uses the earlier norms'
# statistics, so their gradients are complete only after it. This is how tiled VAE decoders that
# synchronise GroupNorm statistics across tiles run the forward; none of them provides the backward.


def _group_norm(norm: nn.Module) -> nn.GroupNorm:
    return norm.norm_layer if isinstance(norm, CogVideoXSpatialNorm3D) else norm


def _group_stats(pieces, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, rstd, count) per (batch, group) of a map given as row pieces, in fp32.

    Each piece's mean and variance are merged with Chan et al.'s pairwise update (not a sum of
    squares, which cancels catastrophically when the mean is large against the spread).
    """
    n = mean = m2 = None
    for p in pieces:
        var_k, mean_k = torch.var_mean(p.float().reshape(p.shape[0], norm.num_groups, -1), dim=-1, correction=0)
        k = p[0].numel() // norm.num_groups
        if n is None:
            n, mean, m2 = k, mean_k, var_k * k
            continue
        total = n + k
        delta = mean_k - mean
        mean = mean + delta * (k / total)
        m2 = m2 + var_k * k + delta * delta * (n * k / total)
        n = total
    return mean, torch.rsqrt(m2 / n + norm.eps), n


def _normalize(norm: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` with given statistics (B G): x * scale + shift per channel, as torch's kernel
    computes it, in fp32, returned in x's dtype (:class:`_ChannelAffine`)."""
    b, c = x.shape[:2]
    scale = rstd.repeat_interleave(c // norm.num_groups, dim=1)  # (B C)
    shift = -mean.repeat_interleave(c // norm.num_groups, dim=1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight.float(), shift * norm.weight.float() + norm.bias.float()
    return _ChannelAffine.apply(x, scale, shift)


class _ChannelAffine(torch.autograd.Function):
    """y = x * scale + shift per (batch, channel), computed in fp32 frame by frame.

    The same arithmetic as ``torch.addcmul`` on the whole map, whose autograd keeps three fp32
    copies of a bf16 map alive in backward (the upcast gradient and its two products): at 256
    channels those were the largest thing a strip's backward held. Here the fp32 temporaries are
    one frame's.
    """

    @staticmethod
    def forward(ctx, x, scale, shift):
        b, c = x.shape[:2]
        scale5, shift5 = scale.view(b, c, 1, 1), shift.view(b, c, 1, 1)
        y = torch.empty_like(x)
        for f in range(x.shape[2]):
            y[:, :, f] = torch.addcmul(shift5, x[:, :, f], scale5)
        ctx.save_for_backward(x, scale)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, scale = ctx.saved_tensors
        b, c = x.shape[:2]
        scale5 = scale.view(b, c, 1, 1)
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_scale = torch.zeros_like(scale)
        grad_shift = torch.zeros_like(scale)
        for f in range(x.shape[2]):
            g = grad_y[:, :, f].float()
            if grad_x is not None:
                grad_x[:, :, f] = g * scale5
            grad_scale += (g * x[:, :, f]).sum((-2, -1))
            grad_shift += g.sum((-2, -1))
        return grad_x, grad_scale, grad_shift


@functools.lru_cache(maxsize=256)
def _nearest(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output position of ``F.interpolate(mode="nearest")`` (asked of torch itself)."""
    src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
    return torch.nn.functional.interpolate(src, size=n_out).view(-1).long()


def _zq_index(t_in: int, t: int, h_in: int, h: int, w_in: int, w: int, device: torch.device):
    """The (frame, row, column) source indices of :func:`_zq_rows`, built once per shape on ``device``.

    Made per call from CPU tensors they cost three blocking host-to-device copies per spatial norm
    and strip, each of which waits for the GPU to drain its queue (a stream synchronisation), and
    the GPU then idles while the next kernels are launched."""
    if t > 1 and t % 2 == 1:  # the first frame is interpolated on its own, as diffusers does
        t_idx = torch.cat([torch.zeros(1, dtype=torch.long), 1 + _nearest(t_in - 1, t - 1)])
    else:
        t_idx = _nearest(t_in, t)
    return tuple(i.to(device) for i in (t_idx, _nearest(h_in, h), _nearest(w_in, w)))


_zq_index_cached = functools.lru_cache(maxsize=1024)(_zq_index)


def _zq_rows(zq: torch.Tensor, size: tuple[int, int, int], rows: tuple[int, int]) -> torch.Tensor:
    """Rows ``rows`` of ``CogVideoXSpatialNorm3D``'s interpolated ``zq`` at ``size`` (T H W), gathered
    directly (the full-resolution interpolation is never built); same values, same gradient."""
    t, h, w = size
    # Cached for plain tensors only: the memory model's fake tensors must not leave fake indices behind.
    index = _zq_index_cached if (type(zq) is torch.Tensor and INDEX_ON_DEVICE) else _zq_index
    t_idx, r_idx, c_idx = index(zq.shape[2], t, zq.shape[3], h, zq.shape[4], w, zq.device)
    return zq.index_select(2, t_idx).index_select(3, r_idx[rows[0] : rows[1]]).index_select(4, c_idx)


def _spatial_norm(norm: nn.Module, f: torch.Tensor, zq: torch.Tensor | None, stats, rows, height: int):
    """``CogVideoXSpatialNorm3D`` (or a plain GroupNorm) on rows ``rows`` of a ``height``-row map;
    the cache entries of its 1x1x1 convs are dropped (:func:`_drop_unread`)."""
    mean, rstd, _ = stats
    if not isinstance(norm, CogVideoXSpatialNorm3D):
        return _normalize(norm, f, mean, rstd), None
    zq = _zq_rows(zq, (f.shape[2], height, f.shape[4]), rows)
    # The 1x1x1 convs' own conv: their wrapper would clone all of zq as a cache nobody reads.
    conv_y, conv_b = norm.conv_y.conv(zq), norm.conv_b.conv(zq)
    return _normalize(norm.norm_layer, f, mean, rstd) * conv_y + conv_b, {"conv_y": None, "conv_b": None}


class _ResnetRun:
    """``CogVideoXResnetBlock3D.forward`` (diffusers 0.42.1) on a strip, its norms' statistics given.

    Called with ``stop=1`` it returns the input of norm2 (after conv1) instead.
    """

    halo, scale = 2, 1  # conv1 and conv2 (3x3), rows of context per side

    def __init__(self, resnet: CogVideoXResnetBlock3D) -> None:
        self.m = resnet
        self.norms = [_group_norm(resnet.norm1), _group_norm(resnet.norm2)]
        self.last = resnet.conv2.conv  # the last convolution: nothing in the block reads its output

    @staticmethod
    def args(x, temb=None, zq=None, conv_cache=None):
        assert temb is None, "the CogVideoX decoder's resnets take no time embedding"
        return x, zq, conv_cache

    @staticmethod
    def result(y, cache):
        return y, cache

    #: Cache entries :meth:`first` writes (the others are :meth:`second`'s).
    first_keys = ("norm1", "conv1")

    def __call__(self, x, zq, cache, stats, rows, height, stop=None):
        h, new = self.first(x, zq, cache, stats, rows, height)
        if stop == 1:
            return h
        y, rest = self.second(h, x, zq, cache, stats, rows, height)
        new.update(rest)
        return y, new

    def first(self, x, zq, cache, stats, rows, height):
        """norm1, SiLU, conv1: the input of norm2 (``h1``) and the cache entries written on the way."""
        m, cache, new = self.m, cache or {}, {}
        h, norm_cache = _spatial_norm(m.norm1, x, zq, stats[0], rows, height)
        if norm_cache is not None:
            new["norm1"] = norm_cache
        h = m.nonlinearity(h)
        h, new["conv1"] = m.conv1(h, conv_cache=cache.get("conv1"))
        return h, new

    def second(self, h, x, zq, cache, stats, rows, height):
        """norm2, SiLU, dropout, conv2 on ``h1`` and the shortcut of ``x``: the block's output."""
        m, cache, new = self.m, cache or {}, {}
        h, norm_cache = _spatial_norm(m.norm2, h, zq, stats[1], rows, height)
        if norm_cache is not None:
            new["norm2"] = norm_cache
        h = m.dropout(m.nonlinearity(h))
        h, new["conv2"] = m.conv2(h, conv_cache=cache.get("conv2"))
        if m.in_channels != m.out_channels:
            if m.use_conv_shortcut:
                x, new["conv_shortcut"] = m.conv_shortcut(x, conv_cache=cache.get("conv_shortcut"))
            else:
                x = m.conv_shortcut(x)
        return h + x, new


class _HeadRun:
    """norm_out, SiLU and conv_out (:func:`_head`) on a strip, the norm's statistics given."""

    halo, scale = 1, 1

    def __init__(self, decoder) -> None:
        self.d = decoder
        self.norms = [_group_norm(decoder.norm_out)]
        self.last = decoder.conv_out.conv

    @staticmethod
    def args(x, temb=None, sample=None, conv_cache=None):
        return x, sample, conv_cache

    @staticmethod
    def result(y, cache):
        return y, cache

    def __call__(self, x, zq, cache, stats, rows, height, stop=None):
        h, norm_cache = _spatial_norm(self.d.norm_out, x, zq, stats[0], rows, height)
        h, conv = self.d.conv_out(self.d.conv_act(h), conv_cache=(cache or {}).get("conv_out"))
        return h, {"norm_out": norm_cache, "conv_out": conv}


class _UpsampleRun:
    """``CogVideoXUpsample3D`` on a strip: nearest 2x and a 3x3 conv, one input row of context."""

    halo, scale, norms = 1, 2, []

    def __init__(self, upsampler: CogVideoXUpsample3D) -> None:
        self.m = upsampler
        self.last = upsampler.conv

    @staticmethod
    def args(x):
        return x, None, None

    @staticmethod
    def result(y, cache):
        return y

    def __call__(self, x, zq, cache, stats, rows, height, stop=None):
        return type(self.m).forward(self.m, x), None  # the class's forward: the instance's is patched


def _block(run, strips: StripPlan, owner: CogVideoXDecoder, forward, params, *args, **kwargs):
    """A block of the recomputation: in strips (:class:`_StripBlock`) where the plan gives it more
    than one, else checkpointed whole (:func:`_checkpointed`)."""
    x, zq, cache = run.args(*args, **kwargs)
    n = strips.count(x.shape[-2] * run.scale)
    if n == 1 or not torch.is_grad_enabled():
        return _checkpointed((forward, run.last), params, *args, **kwargs)
    flat, spec = tree_flatten(cache)
    is_t = [isinstance(t, torch.Tensor) for t in flat]
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    box: dict = {}
    plan = strips.plan
    y, *outs = _StripBlock.apply((run, owner._saved, plan.reuse_stats_pass, plan.keep_conv1_output), n, spec,
                                 [None if t else v for t, v in zip(is_t, flat)], is_t, box, x, zq, *tensors, *params)
    it = iter(outs)
    return run.result(y, tree_unflatten([next(it) if t else v for t, v in zip(box["is_t"], box["leaves"])],
                                        box["spec"]))


def _rows_of(tree, c0: int, c1: int):
    return tree_unflatten([t[..., c0:c1, :] if isinstance(t, torch.Tensor) else t for t in tree_flatten(tree)[0]],
                          tree_flatten(tree)[1])


def _stats_of(run, n: int, x, zq, cache, keep: dict | None = None) -> list:
    """Pass 1: every norm's statistics over the whole frame group, strip by strip. With ``keep`` (a
    resnet), conv1's output and the cache entries it writes are kept there as whole maps."""
    rows = x.shape[-2]
    stats = []
    for j, norm in enumerate(run.norms):
        strips = strip_rows(rows, n, run.halo)
        if j == 0:  # the first norm reads the block input itself
            pieces = (x[..., r0:r1, :] for r0, r1, _, _ in strips)
        elif keep is not None and j == 1:
            pieces = _kept_first(run, x, zq, cache, stats, strips, rows, keep)
        else:  # a later norm's input is recomputed strip by strip and dropped after its reduction
            pieces = (run(x[..., c0:c1, :], zq, _rows_of(cache, c0, c1), stats, (c0, c1), rows, stop=j)
                      [..., r0 - c0 : r1 - c0, :] for r0, r1, c0, c1 in strips)
        stats.append(_group_stats(pieces, norm))
    return stats


def _kept_first(run, x, zq, cache, stats, strips, rows: int, keep: dict):
    """A resnet's first half (norm1, conv1) strip by strip, for norm2's statistics: yields each
    strip's interior of conv1's output and writes it, and the cache entries written on the way,
    into whole maps in ``keep`` (``"h1"``, ``"cache"``), so the strips pass runs the second half only."""
    for r0, r1, c0, c1 in strips:
        h, new = run.first(x[..., c0:c1, :], zq, _rows_of(cache, c0, c1), stats, (c0, c1), rows)
        if not keep:
            keep["h1"] = h.new_empty((*h.shape[:-2], rows, h.shape[-1]))
            keep["cache"] = {k: t.new_empty((*t.shape[:-2], rows, t.shape[-1])) if isinstance(t, torch.Tensor) else t
                             for k, t in new.items()}
        keep["h1"][..., r0:r1, :] = h[..., r0 - c0 : r1 - c0, :]
        for k, t in new.items():
            if isinstance(t, torch.Tensor):
                keep["cache"][k][..., r0:r1, :] = t[..., r0 - c0 : r1 - c0, :]
        yield h[..., r0 - c0 : r1 - c0, :]


def _stat_grad(h: torch.Tensor, stats, grads) -> torch.Tensor:
    """dL/dh through a norm's statistics (mean, rstd over N elements per group), given dL/dmean and
    dL/drstd: g_mean / N - g_rstd * rstd^3 * (h - mean) / N, as one per-channel a + b * h (one fp32
    temporary of h's size)."""
    mean, rstd, n = stats
    g_mean, g_rstd = grads
    c = h.shape[1]
    b = -g_rstd * rstd**3 / n
    a = g_mean / n - b * mean
    a, b = (t.repeat_interleave(c // mean.shape[1], dim=1).view(h.shape[0], c, 1, 1, 1) for t in (a, b))
    return torch.addcmul(a, h, b).to(h.dtype)


class _StripBlock(torch.autograd.Function):
    """One CogVideoX block run and recomputed in horizontal strips, exact through its group norms.

    Forward (no gradient): the norms' statistics (:func:`_stats_of`), then the strips with
    ``run.halo`` rows of context each, whose interiors (output and written cache) are the block's.
    Backward: each strip recomputed with the statistics as leaves and pulled back with its rows of
    the output gradient; then the statistics' gradients through their reductions, last norm first
    (see the section comment). Input map, ``zq`` and input cache are saved (through the
    saved-tensor hooks that may hold them in host memory); the statistics are a few floats.
    """

    @staticmethod
    def forward(ctx, run_saved, n, spec, flat, is_t, box, x, zq, *inputs):
        run, saved, reuse, ctx.keep_h1 = run_saved
        k = sum(is_t)
        cache_in, params = inputs[:k], inputs[k:]
        cache = _unflatten(spec, flat, is_t, cache_in)
        rows = x.shape[-2]
        with torch.no_grad():
            # With ``reuse`` a resnet keeps conv1's output from the statistics pass (one map of its
            # output's size) and the strips run norm2 on: one conv per resnet less in the forward.
            kept = {} if reuse and isinstance(run, _ResnetRun) else None
            stats = _stats_of(run, n, x, zq, cache, kept)
            y = cache_out = None
            for r0, r1, c0, c1 in strip_rows(rows, n, run.halo):
                if kept:
                    cc = {key: _rows_of(v, c0, c1) for key, v in kept["cache"].items()}
                    yc, rest = run.second(kept["h1"][..., c0:c1, :], x[..., c0:c1, :], zq, _rows_of(cache, c0, c1),
                                          stats, (c0, c1), rows)
                    cc.update(rest)
                else:
                    yc, cc = run(x[..., c0:c1, :], zq, _rows_of(cache, c0, c1), stats, (c0, c1), rows)
                leaves, out_spec = tree_flatten(cc)
                s = run.scale
                if y is None:  # shapes from the first strip, rows from the whole map
                    y = yc.new_empty((*yc.shape[:-2], rows * s, yc.shape[-1]))
                    cache_out = [t.new_empty((*t.shape[:-2], rows, t.shape[-1])) if isinstance(t, torch.Tensor)
                                 else t for t in leaves]
                y[..., r0 * s : r1 * s, :] = yc[..., (r0 - c0) * s : (r1 - c0) * s, :]
                for acc, t in zip(cache_out, leaves):
                    if isinstance(t, torch.Tensor):
                        acc[..., r0:r1, :] = t[..., r0 - c0 : r1 - c0, :]
                # The top-level cache key of each tensor the block writes (which backward pass pulls its gradient).
                out_keys = [key for key, v in cc.items() for t in tree_flatten(v)[0]
                            if isinstance(t, torch.Tensor)] if isinstance(cc, dict) else []
                del yc, cc, leaves
            del kept
        box.update(spec=out_spec, leaves=cache_out, is_t=[isinstance(t, torch.Tensor) for t in cache_out])
        ctx.out_keys, ctx.split = out_keys, SPLIT_RESNET_BACKWARD
        ctx.run, ctx.n, ctx.spec, ctx.flat, ctx.is_t, ctx.stats, ctx.params = run, n, spec, flat, is_t, stats, params
        ctx.out_is_t = box["is_t"]
        ctx.set_materialize_grads(False)
        ctx.saved, ctx.num_cache = saved, len(cache_in)
        ctx.like = [(tuple(t.shape), t.dtype, t.device) for t in (x, *cache_in)]  # for the gradients' buffers
        if saved is not None and _PACKING[0]:
            # In host memory as the strips' row ranges (halo included), so backward fetches one
            # strip ahead of the strip it recomputes, not the whole map (the whole map's size decides).
            ranges = list(strip_rows(rows, n, run.halo))
            ctx.pieces = [[saved.pack(t[..., c0:c1, :], t.numel() * t.element_size()) for t in (x, *cache_in)]
                          for _, _, c0, c1 in ranges]
            ctx.record = saved.add(ctx.pieces)
            ctx.save_for_backward(zq)
        else:
            ctx.pieces = None
            ctx.save_for_backward(zq, x, *cache_in)
        return (y, *(t for t in cache_out if isinstance(t, torch.Tensor)))

    @staticmethod
    def backward(ctx, grad_y, *grad_cache_out):
        _PACKING[0] = False  # the recomputation's own saved tensors stay on the device
        try:
            return _StripBlock._backward(ctx, grad_y, *grad_cache_out)
        finally:
            _PACKING[0] = True

    @staticmethod
    def _backward(ctx, grad_y, *grad_cache_out):
        run, n, stats, saved = ctx.run, ctx.n, ctx.stats, ctx.saved
        zq, *whole = ctx.saved_tensors
        need = ctx.needs_input_grad
        k = ctx.num_cache
        need_x, need_zq, need_c = need[6], need[7] and zq is not None, need[8 : 8 + k]
        params = [p for p, nd in zip(ctx.params, need[8 + k :]) if nd]
        rows, s = ctx.like[0][0][-2], run.scale
        strips = list(strip_rows(rows, n, run.halo))
        if ctx.pieces is None:
            def pieces(i):  # slices of the whole maps kept on the device
                return [t[..., strips[i][2] : strips[i][3], :] for t in whole]
        else:
            # The strip passes backward makes over the saved pieces, in order, and what each reads:
            # every piece, or the block input alone (the first norm's statistics term). A pass's last
            # strip starts the next pass's first strip copying, as each strip starts the next one's.
            split = isinstance(run, _ResnetRun) and ctx.split
            passes = ["all"] * (2 if split else max(1, len(stats))) + (["x"] if need_x and stats else [])
            fetched, done = {}, [0]

            def start(i, kind):
                return [saved.start(p) for p in (ctx.pieces[i] if kind == "all" else ctx.pieces[i][:1])]

            def pieces(i):  # strip i's rows from host memory; the next strip's start copying
                kind = passes[done[0]]
                if i == 0 and done[0] == 0:  # possibly started by the strip block before (in backward)
                    got = saved.first_strip(ctx.record)
                else:
                    got = fetched.pop(i, None) or start(i, kind)
                if i + 1 < len(strips):
                    fetched[i + 1] = start(i + 1, kind)
                else:
                    done[0] += 1
                    if done[0] == len(passes):
                        saved.start_next(ctx.record)
                    elif saved.across_passes:
                        fetched[0] = start(0, passes[done[0]])
                return [saved.finish(h) for h in got]
        grad_x, *grad_c = [torch.zeros(shape, dtype=dtype, device=device) if nd else None
                           for (shape, dtype, device), nd in zip(ctx.like, (need_x, *need_c))]
        grad_zq = torch.zeros_like(zq) if need_zq else None
        grad_p = [None] * len(params)
        grad_stats = [[torch.zeros_like(st[0]), torch.zeros_like(st[1])] for st in stats]

        def pull(outs, grads, i, num_stats, stop=None, call=None, extra=None, last=None):
            """Recompute strip i (up to norm ``stop``'s input; or ``call`` it), take its interior
            ``outs(out)``, pull ``grads(interior)`` back through it and accumulate every input's
            gradient. ``extra``: (a list the call appends one more leaf to, a function that takes
            that leaf's gradient as ``(g, c0, c1)``). ``last``: a convolution whose output only the
            gradient reads (the block's last: :func:`grad_only`)."""
            c0, c1 = strips[i][2:]
            xc, *cc = pieces(i)
            xc = xc.detach().requires_grad_(need_x)
            zl = zq.detach().requires_grad_(need_zq) if zq is not None else None
            cc = [t.detach().requires_grad_(nd) for t, nd in zip(cc, need_c)]
            st = [(m.detach().requires_grad_(), r.detach().requires_grad_(), cnt) for m, r, cnt in stats[:num_stats]]
            with torch.enable_grad(), grad_only(last):  # backward runs with grad off: the recomputation needs it on
                cache = _unflatten(ctx.spec, ctx.flat, ctx.is_t, cc)
                if call is None:
                    out = run(xc, zl, cache, st, (c0, c1), rows, stop=stop)
                else:
                    out = call(xc, zl, cache, st, (c0, c1), rows)
                interior = outs(out)
                del out
                pairs = [(o, g) for o, g in zip(interior, grads(interior)) if g is not None and o.requires_grad]
            if not pairs:
                return
            wrt = ([xc] if need_x else []) + ([zl] if need_zq else []) + [t for t in cc if t.requires_grad]
            wrt += [t for m, r, _ in st for t in (m, r)] + params
            if extra is not None:
                wrt.append(extra[0][-1])
            got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
            del pairs, interior
            if need_x:
                g = next(got)
                if g is not None:
                    grad_x[..., c0:c1, :] += g
            if need_zq:
                g = next(got)
                if g is not None:
                    grad_zq.add_(g)
            for acc, nd in zip(grad_c, need_c):
                g = next(got) if nd else None
                if g is not None:
                    acc[..., c0:c1, :] += g
            for j in range(num_stats):
                for i in range(2):
                    g = next(got)
                    if g is not None:
                        grad_stats[j][i] += g
            for i in range(len(params)):
                g = next(got)
                if g is not None:
                    grad_p[i] = g if grad_p[i] is None else grad_p[i] + g
            if extra is not None:
                g = next(got)
                if g is not None:
                    extra[1](g, c0, c1)

        def interior_of(out, r0, r1, c0):  # a strip's interior rows of its output and written cache
            y, cache = out
            leaves = [t for t in tree_flatten(cache)[0] if isinstance(t, torch.Tensor)]
            return [y[..., (r0 - c0) * s : (r1 - c0) * s, :]] + [t[..., r0 - c0 : r1 - c0, :] for t in leaves]

        if isinstance(run, _ResnetRun) and ctx.split:
            # A resnet in two passes instead of three: (1) the strips from norm2 on, with conv1's output
            # h1 recomputed without gradient as a leaf, whose gradient is gathered into a map of h1's
            # size; (2) once norm2's statistics' gradients are complete, norm1 and conv1 pulled back
            # strip by strip with that map plus the statistics' term. Before, conv1 was recomputed and
            # back-propagated twice (in the strips and again for norm2's statistics): per resnet 9
            # conv-units of backward (a conv's forward = 1), now 7. Same gradient, summed in another order.
            first = [g for g, key in zip(grad_cache_out, ctx.out_keys) if key in run.first_keys]
            rest = [g for g, key in zip(grad_cache_out, ctx.out_keys) if key not in run.first_keys]
            g_h1: list = []
            # With ``RecomputePlan.keep_conv1_output``: conv1's output of pass 1 (recomputed there without
            # gradient), for pass 2's norm2-statistics term, which reads its values; pass 2 then runs
            # conv1 for its gradients only. One map of h1's size more, one conv1 forward per strip less.
            h1_kept: list = []
            keep = ctx.keep_h1

            def add_h1(g, c0, c1):
                if not g_h1:
                    g_h1.append(g.new_zeros((*g.shape[:-2], rows, g.shape[-1])))
                g_h1[0][..., c0:c1, :] += g

            for i, (r0, r1, c0, c1) in enumerate(strips):
                leaf: list = []

                def second(xc, zl, cache, st, rr, height, leaf=leaf, r0=r0, r1=r1, c0=c0):
                    with torch.no_grad():
                        h1 = run.first(xc, zl, cache, st, rr, height)[0]
                        if keep:
                            if not h1_kept:
                                h1_kept.append(h1.new_empty((*h1.shape[:-2], rows, h1.shape[-1])))
                            h1_kept[0][..., r0:r1, :] = h1[..., r0 - c0 : r1 - c0, :]
                    leaf.append(h1.requires_grad_())
                    return run.second(h1, xc, zl, cache, st, rr, height)

                grads = [None if grad_y is None else grad_y[..., r0 * s : r1 * s, :]]
                grads += [None if g is None else g[..., r0:r1, :] for g in rest]
                pull(lambda out, r0=r0, r1=r1, c0=c0: interior_of(out, r0, r1, c0),
                     lambda _, grads=grads: grads, i, len(stats), call=second, extra=(leaf, add_h1), last=run.last)
            for i, (r0, r1, c0, c1) in enumerate(strips):
                def grads(interior, r0=r0, r1=r1):
                    h1 = h1_kept[0][..., r0:r1, :] if h1_kept else interior[0].detach()
                    g = _stat_grad(h1, stats[1], grad_stats[1])
                    if g_h1:
                        g = g + g_h1[0][..., r0:r1, :]
                    return [g] + [None if t is None else t[..., r0:r1, :] for t in first]

                # With conv1's output kept, nothing reads the recomputed one: conv1 runs for its gradients only.
                pull(lambda out, r0=r0, r1=r1, c0=c0: interior_of(out, r0, r1, c0), grads, i, 1, call=run.first,
                     last=run.m.conv1.conv if h1_kept else None)
            g_h1.clear()
            h1_kept.clear()
            norms_left = [0]
        else:
            # 1. The strips, pulled back with their rows of the output's (and written cache's) gradient.
            for i, (r0, r1, c0, c1) in enumerate(strips):
                grads = [None if grad_y is None else grad_y[..., r0 * s : r1 * s, :]]
                grads += [None if g is None else g[..., r0:r1, :] for g in grad_cache_out]
                pull(lambda out, r0=r0, r1=r1, c0=c0: interior_of(out, r0, r1, c0),
                     lambda _, grads=grads: grads, i, len(stats), last=run.last)
            norms_left = list(range(len(stats)))
        # 2. The statistics' gradients through their reductions, last norm first.
        for j in reversed(norms_left):
            for i, (r0, r1, c0, c1) in enumerate(strips):
                if j == 0:  # the first norm reads the block input: an elementwise term, nothing to
                    if need_x:  # recompute; frame by frame, so its fp32 temporary stays small
                        xi = pieces(i)[0][..., r0 - c0 : r1 - c0, :]
                        for f in range(xi.shape[2]):
                            grad_x[:, :, f : f + 1, r0:r1] += _stat_grad(xi[:, :, f : f + 1], stats[0], grad_stats[0])
                        del xi
                    continue
                pull(lambda h, r0=r0, r1=r1, c0=c0: [h[..., r0 - c0 : r1 - c0, :]],
                     lambda hs, j=j: [_stat_grad(hs[0].detach(), stats[j], grad_stats[j])], i, j, stop=j)
        if ctx.pieces is not None:  # every started copy is waited for before its memory can go
            assert not fetched, f"pieces fetched for a pass that did not run: {sorted(fetched)}"
        it_p = iter(grad_p)
        grad_params = [next(it_p) if nd else None for nd in need[8 + k :]]
        return (None, None, None, None, None, None, grad_x, grad_zq, *grad_c, *grad_params)
