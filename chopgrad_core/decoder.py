"""The interface every VAE adapter implements: a causal decoder that decodes frame group by frame group.

A causal video VAE decoder turns latents (B C T h w) into frames (B c F H W) one *group* of latent
frames at a time, carrying a :class:`CausalCache` of features from the previous group into the next.
The engine (``chopgrad_core.engine``) only ever talks to this interface; an adapter
(``chopgrad_core/adapters/<family>.py``) holds what differs between VAE families: which latent
frames form a group, how many pixel frames each group yields, and how the cache is passed.

Shape legend: B batch (cameras), C latent channels, T latent frames, h w latent height/width,
c pixel channels, F pixel frames, H W pixel height/width.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from chopgrad_core.errors import NonFiniteError, ShapeError
from chopgrad_core.memory import RecomputePlan, plan_recompute


_TAKEN = object()  # marks a CausalCache whose state was handed over


def map_tensors(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to every tensor in a nest of lists, tuples and dicts; other leaves pass through.

    Caches hold sentinels ("Rep", None) beside tensors, so a plain tree map over tensors only is what
    every cache operation needs.
    """
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tensors(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(fn, v) for v in tree)
    return tree


def iter_tensors(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from iter_tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from iter_tensors(v)


@dataclass
class CausalCache:
    """Features one frame group leaves for the next, as a nest of tensors and sentinels.

    Adapters never write into a cache they were given, so a snapshot is simply a reference. The
    one exception is :meth:`take`: a caller that will not need this cache again hands its state
    over, and the adapter overwrites it slot by slot, so each old feature map is freed as soon as
    its replacement exists instead of both caches living until the group is done.
    """

    state: Any

    def take(self) -> Any:
        """The state, leaving this cache empty (using it again is an error)."""
        state, self.state = self.state, _TAKEN
        assert state is not _TAKEN, "cache was already handed over with take()"
        return state

    def detach(self) -> CausalCache:
        """Cut the gradient path to earlier groups (the truncation). Values are unchanged."""
        return CausalCache(map_tensors(torch.Tensor.detach, self.state))

    def crop(self, rows: slice, cols: slice, latent_hw: tuple[int, int]) -> CausalCache:
        """The spatial window (rows, cols), given in latent pixels, of every cached feature map.

        Each feature map lives at an integer multiple of the latent resolution (the decoder's
        upsampling factor at that depth); the window is scaled to it.
        """
        h, w = latent_hw

        def _crop(t: torch.Tensor) -> torch.Tensor:
            sh, sw = t.shape[-2] // h, t.shape[-1] // w
            assert sh * h == t.shape[-2] and sw * w == t.shape[-1], "cache not at a multiple of latent size"
            return t[..., rows.start * sh : rows.stop * sh, cols.start * sw : cols.stop * sw]

        return CausalCache(map_tensors(_crop, self.state))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in iter_tensors(self.state))


class CacheOffloader:
    """Keeps cache tensors in host memory while they wait for the next group, copying on a side stream.

    On CUDA the host buffers are pinned and every copy runs on a side stream, so copies overlap the
    decoder's compute; on the CPU the same bookkeeping runs with plain synchronous copies (tests).

    Slot by slot (adapters with ``streams_cache``): :meth:`store` hands a freshly written slot to the
    host as soon as it exists; :meth:`fetch` starts copying a stored slot back, and :meth:`ready`
    makes the compute stream wait for that one slot just before its first use, so a group's input
    cache arrives while the group's first blocks already run. Whole caches (other adapters):
    :meth:`store_tree` / :meth:`fetch_tree`.

    One host buffer per key and ring position, reused group after group and call after call (pinning
    memory costs about a second per GB, more than a whole window). With ``copy_streams = 2`` (the
    default) stores (device to host) and fetches (host to device) run on two side streams, so the
    GPU's two copy engines move data both ways at once (at 896x1600 a group moves about 34 GiB each
    way and back); events order a buffer's store after the fetch that last read it and a fetch after
    the store that wrote it. With one stream, the stream's order does that.
    """

    #: Side streams for copies: 2 (stores and fetches concurrently) or 1 (one queue for both).
    copy_streams = 2

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None  # stores (and fetches with one stream)
        self.fetch_stream = (torch.cuda.Stream(device) if self.cuda and self.copy_streams == 2 else self.stream)
        self.written: dict[int, torch.cuda.Event] = {}  # host buffer -> its last store (two streams only)
        self.read: dict[int, torch.cuda.Event] = {}  # host buffer -> its last fetch (two streams only)
        self.host: dict[Any, torch.Tensor] = {}  # key -> the buffer last stored under it
        self.buffers: dict[tuple, torch.Tensor] = {}  # (key, dtype, ring position) -> flat buffer
        self.events: dict[Any, torch.cuda.Event] = {}
        self.turns: dict[Any, int] = {}  # key -> stores so far (which buffer of the ring is next)
        self.pointers: dict[Any, set[int]] = {}  # key -> data pointers of its host buffers
        #: Buffers per key, used in turn: a cache stored under a key must survive the next stores
        #: under it while a window may still read it (its backward re-reads the cache it started
        #: from; sliding D keeps D + 1 snapshots). The engine sets it per call: D + 2, block 2.
        self.ring = 2

    def restart(self) -> None:
        """Start every key's ring over at its first buffer (the engine calls it per camera chunk).

        Nothing stored by an earlier call or chunk is read again, so each call uses the same
        buffers in the same order: a warm-up call pins all of them (with turns counted across calls
        a key's first-group shape, which differs from the later groups', landed on another buffer
        of its ring in the next call and was pinned there, inside the timed call). Buffer reuse
        stays ordered: a store waits for the fetch that last read its buffer (two streams) or
        follows it on the one stream.
        """
        self.turns.clear()

    def holds(self, key: Any, t: Any) -> bool:
        """Whether ``t`` is a host copy stored under ``key`` (any buffer of its ring: so it has to be fetched)."""
        return isinstance(t, torch.Tensor) and t.data_ptr() in self.pointers.get(key, ())

    def store(self, key: Any, t: torch.Tensor, ring: int | None = None) -> torch.Tensor:
        """Start copying device tensor ``t`` to host; returns the host tensor. ``t`` may be dropped at once.

        The host buffer is the next of ``ring`` (default :attr:`ring`) buffers kept for ``key``.
        """
        turn = self.turns.get(key, 0)
        self.turns[key] = turn + 1
        # One buffer per ring position, whatever the shape: a smaller tensor (the first group's
        # cache, fewer frames) uses the front of the buffer a larger one pinned, so the first
        # group's shapes pin nothing of their own (at 848x1600 CogVideoX that halved the pinned memory).
        slot = (key, t.dtype, turn % (ring or self.ring))
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.numel() < t.numel():
            buffer = self.buffers[slot] = torch.empty(t.numel(), dtype=t.dtype, pin_memory=self.cuda)
            self.pointers.setdefault(key, set()).add(buffer.data_ptr())
        host = buffer[: t.numel()].view(t.shape)
        self.host[key] = host
        if not self.cuda:
            return host.copy_(t)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # t is written on the compute stream
        two = self.fetch_stream is not self.stream
        if two and host.data_ptr() in self.read:  # a fetch may still be reading this buffer
            self.stream.wait_event(self.read.pop(host.data_ptr()))
        with torch.cuda.stream(self.stream):
            host.copy_(t, non_blocking=True)
            if two:
                self.written[host.data_ptr()] = event = torch.cuda.Event()
                event.record(self.stream)
        t.record_stream(self.stream)  # the allocator waits for the copy before reusing t's memory
        return host

    def fetch(self, items: list[tuple[Any, torch.Tensor]]) -> list[torch.Tensor]:
        """Start copying the host tensors ``(key, host)`` back, in order; :meth:`ready` waits for one."""
        out = [torch.empty(host.shape, dtype=host.dtype, device=self.device) for _, host in items]
        if not self.cuda:
            return [dev.copy_(host) for dev, (_, host) in zip(out, items)]
        # The new device blocks may be memory the compute stream used a moment ago: start after it.
        stream = self.fetch_stream
        two = stream is not self.stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for dev, (key, host) in zip(out, items):
                if two and host.data_ptr() in self.written:  # its store must have landed
                    stream.wait_event(self.written[host.data_ptr()])
                dev.copy_(host, non_blocking=True)
                self.events[key] = event = torch.cuda.Event()
                event.record(stream)
                if two:
                    self.read[host.data_ptr()] = event
        return out

    def ready(self, key: Any) -> None:
        """Make the compute stream wait until the fetch of ``key`` (if one is in flight) is done."""
        event = self.events.pop(key, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def store_tree(self, cache: CausalCache) -> CausalCache:
        """Every tensor of a whole cache to host (keys: position in the nest)."""
        count = iter(range(1 << 30))
        return CausalCache(map_tensors(lambda t: self.store(("tree", next(count)), t), cache.state))

    def fetch_tree(self, cache: CausalCache) -> CausalCache:
        """A whole cache back on the device, waited for."""
        hosts = list(iter_tensors(cache.state))
        keys = [("tree", i) for i in range(len(hosts))]
        devs = iter(self.fetch(list(zip(keys, hosts))))
        for key in keys:
            self.ready(key)
        return CausalCache(map_tensors(lambda t: next(devs), cache.state))


def strip_rows(rows: int, strips: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) per horizontal strip of a map ``rows`` high: interior rows [r0, r1) and the
    rows [c0, c1) computed for them, ``halo`` rows of context on each side (clipped at the edges)."""
    if strips == 1:
        yield 0, rows, 0, rows
        return
    step = -(-rows // strips)
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        yield r0, r1, max(0, r0 - halo), min(rows, r1 + halo)


class StripPlan:
    """How a block is recomputed: in how many strips, and whether at all (selective recomputation).

    A strip is at most ``ceil(H / strips)`` rows of the block's output (H = the decoded frame
    height), so the full-resolution blocks, which hold most of the activations, get ``strips``
    strips, half-resolution blocks half as many, and the low-resolution blocks, whose activations
    are small and whose strips would be mostly halo and launch overhead, run whole. Blocks whose
    input is at most ``keep_below`` times the latent size keep their activations instead.
    """

    def __init__(self, plan: RecomputePlan, upscale: int) -> None:
        self.plan, self.strips, self.upscale = plan, plan.strips, upscale
        self.latent_rows: int | None = None  # set per decoded group
        self.max_rows: int | None = None  # rows of an output strip

    def set_latent_rows(self, rows: int) -> None:
        self.latent_rows = rows
        self.max_rows = -(-rows * self.upscale // self.strips)

    def count(self, out_rows: int) -> int:
        return 1 if self.max_rows is None else max(1, -(-out_rows // self.max_rows))

    def keep(self, in_rows: int) -> bool:
        return self.latent_rows is not None and in_rows <= self.plan.keep_below * self.latent_rows


#: In a block's recomputation the last convolution computes no output, only its gradients
#: (:func:`grad_only`): nothing after it in the block reads its values (a residual sum, reshapes), so
#: its forward there was work thrown away, one of the two convolutions a residual block recomputes.
#: False: the recomputation runs every convolution's forward (as before).
GRAD_ONLY_LAST_CONV = True


class _GradOnlyConv(torch.autograd.Function):
    """A convolution whose output is only differentiated, never read: forward allocates the output
    without computing it; backward is ``aten.convolution_backward``, the call autograd's own
    convolution backward makes, so the gradients are the same numbers."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, bias is not None)
        k = weight.shape[2:]
        size = [(n + 2 * p - d * (kk - 1) - 1) // s + 1
                for n, kk, s, p, d in zip(x.shape[2:], k, stride, padding, dilation)]
        return x.new_empty((x.shape[0], weight.shape[0], *size))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if has_bias else None, list(stride), list(padding), list(dilation),
            False, [0] * len(stride), groups, mask)
        return gx, gw, gb, None, None, None, None


def grad_only_conv(conv: nn.Module, x: torch.Tensor, padding=None) -> torch.Tensor:
    """``conv(x)`` (an ``nn.Conv2d``/``nn.Conv3d`` with zero padding, or ``padding`` given) as a
    :class:`_GradOnlyConv`: the output's values are undefined, its gradients exact."""
    if padding is None:  # nn.Conv* keep stride, padding and dilation as tuples
        assert conv.padding_mode == "zeros" and not isinstance(conv.padding, str), conv
        padding = conv.padding
    return _GradOnlyConv.apply(x, conv.weight, conv.bias, conv.stride, tuple(padding), conv.dilation, conv.groups)


@contextlib.contextmanager
def grad_only(conv: nn.Module | None) -> Iterator[None]:
    """Inside, ``conv`` (the last convolution of a block being recomputed for its gradients) skips
    its forward (:data:`GRAD_ONLY_LAST_CONV`): ``nn.Conv*.forward`` calls ``_conv_forward``, which
    this replaces on the instance; adapters whose own forwards call the convolution directly check
    ``conv.grad_only``."""
    if conv is None or not GRAD_ONLY_LAST_CONV or not torch.is_grad_enabled():
        yield
        return
    conv._conv_forward = lambda x, weight, bias: grad_only_conv(conv, x)
    conv.grad_only = True
    try:
        yield
    finally:
        del conv._conv_forward, conv.grad_only


@dataclass(frozen=True)
class Group:
    """One decode step: latent frames ``latent`` decode to pixel frames ``pixel``."""

    index: int
    latent: slice
    pixel: slice


class CausalDecoder(abc.ABC):
    """A VAE decoder seen as a function ``(z_group, cache) -> (frames, cache)`` applied group by group.

    Subclasses (one per VAE family) implement :meth:`groups`, :meth:`init_cache` and
    :meth:`decode_group`. ``decode_group`` must be functional: it may not mutate the cache it is
    given, so the engine can keep snapshots and re-run windows from them.
    """

    #: Human-readable family name, used in error messages.
    family: str = "?"

    #: Plans the levers from the frame size (coefficients per family, :mod:`chopgrad_core.memory`).
    planner = staticmethod(plan_recompute)

    #: ``decode_group`` takes ``offload``/``store`` and moves cache slots to and from host memory
    #: one at a time while it decodes; otherwise the engine moves whole caches between groups.
    streams_cache: bool = False

    def __init__(self, vae: nn.Module, *, clamp: bool) -> None:
        self.vae = vae
        #: Clamp decoded frames to [-1, 1] as the family's ``vae.decode`` does (zero gradient where
        #: saturated). Kept on by default so every mode equals ``vae.decode`` exactly.
        self.clamp = clamp

    # -- what differs per family -------------------------------------------------------------

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int: ...

    @property
    @abc.abstractmethod
    def spatial_scale(self) -> int:
        """Pixels per latent pixel along height and width."""

    @property
    def out_channels(self) -> int:
        return 3

    @abc.abstractmethod
    def groups(self, num_latent_frames: int) -> list[Group]:
        """The decode steps for ``num_latent_frames``, in order; pixel slices tile [0, F)."""

    @abc.abstractmethod
    def init_cache(self) -> CausalCache: ...

    @abc.abstractmethod
    def decode_group(self, z: torch.Tensor, cache: CausalCache, group: Group, *,
                     consume: bool = False, offload: CacheOffloader | None = None,
                     store: bool = False) -> tuple[torch.Tensor, CausalCache]:
        """Decode ``z`` (B C t h w, the group's latent frames) given the previous group's cache.

        With ``consume=True`` the adapter may take the cache's state (:meth:`CausalCache.take`)
        and free it while it decodes; otherwise the given cache is left untouched. Adapters with
        ``streams_cache`` accept ``offload``: slots of ``cache`` it holds in host memory are
        fetched back as the group needs them, and with ``store=True`` the slots this group writes
        go to host memory as they are written (only for a cache no gradient flows through).
        """

    def recomputation(self, plan: RecomputePlan | int = 1,
                      offloader: CacheOffloader | None = None) -> contextlib.AbstractContextManager:
        """Context in which ``decode_group`` checkpoints its blocks (recomputes them in backward).

        ``plan`` (:class:`~chopgrad_core.memory.RecomputePlan`, or a strip count) says how: strips
        per full-resolution block where the adapter supports them (exact: blocks are local or their
        norms' statistics are taken in a first pass), block inputs offloaded to ``offloader`` while
        they wait for the backward pass, low-resolution blocks kept instead of recomputed. The
        default has no checkpointing.
        """
        return contextlib.nullcontext()

    def plan_recompute(self, latents: torch.Tensor, budget_gib: float | None,
                       strips: int | None = None, offload_available: bool = True) -> RecomputePlan:
        """The :class:`~chopgrad_core.memory.RecomputePlan` for decoding ``latents`` within ``budget_gib``."""
        h, w = latents.shape[-2:]
        s = self.spatial_scale
        channels, frames = self.full_resolution_map(latents.shape[2])
        return self.planner(height=h * s, width=w * s, channels=channels, frames=frames,
                            element_size=latents.element_size(), budget_gib=budget_gib, strips=strips,
                            offload_available=offload_available)

    def full_resolution_map(self, num_latent_frames: int) -> tuple[int, int]:
        """(channels, frames) of the decoder's full-resolution feature map for one group (planning)."""
        return 128, 4

    def window_done(self) -> None:
        """Called by the engine after each window's backward pass (drops per-window bookkeeping)."""

    # -- shared ------------------------------------------------------------------------------

    def num_frames(self, num_latent_frames: int) -> int:
        return self.groups(num_latent_frames)[-1].pixel.stop

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter the decode path uses (gradients reach those that require grad)."""
        return list(self._modules_used().parameters())

    def _modules_used(self) -> nn.Module:
        return self.vae.decoder

    def check_latents(self, latents: torch.Tensor, name: str = "latents") -> None:
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ShapeError(
                f"{name} must be a 5-D tensor (B, C={self.latent_channels}, T, h, w) for the {self.family} VAE, "
                f"got shape {shape}"
            )
        if latents.shape[1] != self.latent_channels:
            raise ShapeError(
                f"{name} has {latents.shape[1]} channels; the {self.family} VAE expects "
                f"(B, C={self.latent_channels}, T, h, w), got shape {tuple(latents.shape)}"
            )
        if latents.shape[2] < 1:
            raise ShapeError(f"{name} has no latent frames: shape {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise NonFiniteError(f"{name} contains NaN or inf values (shape {tuple(latents.shape)})")

    def frames_shape(self, latents: torch.Tensor) -> tuple[int, int, int, int, int]:
        b, _, t, h, w = latents.shape
        s = self.spatial_scale
        return (b, self.out_channels, self.num_frames(t), h * s, w * s)

    def _finish(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.clamp(-1.0, 1.0) if self.clamp else frames

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r}, clamp={self.clamp})"
