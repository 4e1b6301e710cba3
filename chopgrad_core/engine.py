"""ChopGrad: pixel losses through a causal video VAE decoder with truncated backpropagation.

Reference: Rivkin et al., "ChopGrad: Pixel-Wise Losses for Latent Video Diffusion via Truncated
Backpropagation", arXiv 2603.17812, 2026.

A causal decoder decodes frame group after frame group, each group reading a cache of features
left by the previous one, so backpropagating a loss on every frame through a plain decode keeps
the whole video's activations alive. ChopGrad cuts that chain: the loss of group i reaches back
through at most a window of groups, and the cache from before the window is a constant. The
forward pass is never truncated: every frame and every loss value equals the normal decode.

Schedules (``mode``):

- ``"full"``: plain autograd through every group; the reference. Memory grows with length.
- ``"sliding"`` (window D, the paper's definition): the loss of group i reaches groups i-D..i;
  the D earlier groups are re-decoded from a detached snapshot, about (D+1) decodes per group.
- ``"block"`` (window k): non-overlapping windows of k groups, the cache detached between them;
  one decode per group, but the last group of a window gets no gradient from later groups.

Exactness: block with k >= G and sliding with D >= G-1 give the full gradient; block k=1 equals
sliding D=0 (G = number of groups).

Memory levers (optional, beyond the paper):

- ``micro_batch``: batch elements (cameras) go through one chunk at a time. Exact: the decoder
  treats batch elements independently.
- ``recompute``: inside a window the decoder's blocks are checkpointed with their cache slots
  passed explicitly (see the adapter), so only block inputs are kept for backward. Exact.
  ``recompute_strips`` recomputes each full-resolution block in horizontal strips with a halo
  covering the block's receptive field (fewer strips at lower resolutions), so one strip's
  activations live at a time. Exact: Wan's blocks are local; CogVideoX's group norms take their
  statistics over the whole frame group in a pass of their own, and backward pulls the
  statistics' gradients through a second pass (``adapters/cogvideox.py``).
- ``offload_cache``: the cache at a cut (with sliding D >= 1: every snapshot a later window starts
  from) waits in host memory (pinned, copied on side streams: stores and fetches on two, so both
  directions move at once) until a window reads it, so one cache, not two, lives on the device.
  With the Wan adapter every slot leaves as soon as it is written and comes back a block ahead of
  its first read; the CogVideoX adapter does the same per resnet's cache entry. Host
  buffers rotate in a ring of D + 2 per slot, so a snapshot survives until the last window that
  reads it (its backward re-reads the cache it started from). On the CPU the same bookkeeping
  runs with plain copies (nothing saved; it keeps the path tested). Exact.
- ``memory_budget_gib`` (with ``recompute``): the levers that scale with the frame size, planned
  per call by :func:`chopgrad_core.memory.plan_recompute` so one camera's working memory fits the
  budget: the strip count from the resolution (strips in the no-grad forward too, so no
  full-resolution block runs whole); the block inputs and input slots recomputation needs, held in
  host memory and fetched back one block (for strips: one strip) ahead of the backward pass
  (checkpoint offload: the device holds gradients and about one block of checkpoints instead of
  a group's); and selective recomputation, which keeps the activations of the low-resolution
  blocks, cheap to store and a large share of the decoder's compute, instead of recomputing them.
  The CogVideoX adapter recomputes each resnet, upsampler and its head once (diffusers' own
  checkpointing nests up blocks over resnets: three forwards per resnet), drops the 1x1x1 convs'
  unread cache copies, offloads checkpoint inputs (as the strips' row ranges) and plans its strips
  with :func:`chopgrad_core.memory.plan_recompute_cogvideox` (no kept levels). Exact.
- ``tile``: the backward pass runs over spatial tiles of (th, tw) latent pixels, each decoded with
  ``tile_halo`` latent pixels of context on every side (the paper's spatial truncation). The
  forward stays exact (an extra no-grad decode of the full frame gives every frame, loss value and
  the pixel gradient); the gradient is approximate: each output pixel's gradient flows only
  through the decoder's computation inside its tile plus halo, so the parts of a receptive field
  beyond the halo (zero padding replaces them) and any global operation (the Wan mid-block
  attention, CogVideoX group norms) see only the tile. A halo covering the whole frame is exact.

Backpropagation into the model that produced the latents: the windows run against a detached
leaf copy of the latents; their gradients (and the decoder's parameter gradients) accumulate
during the call, and a ``torch.autograd.Function`` hands them on when the returned scalar's
``.backward()`` is called, scaled by the incoming gradient. So ``pixel_loss`` composes with
other losses: ``(flow_loss + 0.1 * pixel_loss(...)).backward()``.

Shape legend: B batch (cameras), C latent channels, T latent frames, h w latent size, c pixel
channels, F pixel frames, H W pixel size, G groups.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from chopgrad_core import losses as _losses
from chopgrad_core.adapters import wrap
from chopgrad_core.decoder import CacheOffloader, CausalCache, CausalDecoder, Group
from chopgrad_core.errors import ChopGradError, NonFiniteError, ShapeError
from chopgrad_core.memory import RecomputePlan

MODES = ("full", "block", "sliding")


# ----------------------------------------------------------------------------------------------
# Streaming decode
# ----------------------------------------------------------------------------------------------


def decode(decoder, latents: torch.Tensor, *, stream: bool = False) -> torch.Tensor | Iterator[torch.Tensor]:
    """Decode ``latents`` (B C T h w) without gradients, group by group; equals ``vae.decode(latents).sample``.

    With ``stream=True`` returns an iterator over groups of frames (B c f H W) as they are decoded,
    so memory does not grow with length when the caller writes each group out.
    """
    decoder = wrap(decoder)
    decoder.check_latents(latents)
    groups = _stream(decoder, latents)
    return groups if stream else torch.cat(list(groups), dim=2)


def _stream(decoder: CausalDecoder, latents: torch.Tensor) -> Iterator[torch.Tensor]:
    cache = decoder.init_cache()
    for group in decoder.groups(latents.shape[2]):
        # no_grad per step, not around the loop: a generator's context would leak into the caller.
        with torch.no_grad():
            frames, cache = decoder.decode_group(latents[:, :, group.latent], cache, group, consume=True)
        yield frames


# ----------------------------------------------------------------------------------------------
# Pixel loss
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """Groups ``start..stop-1`` decoded with gradient; the loss is taken on ``loss_groups``."""

    start: int
    stop: int
    loss_groups: tuple[int, ...]


def _windows(mode: str, window: int, num_groups: int, need_grad: bool) -> list[_Window]:
    if not need_grad:  # nothing to backpropagate: decode each group once
        return [_Window(i, i + 1, (i,)) for i in range(num_groups)]
    if mode == "sliding":
        return [_Window(max(0, i - window), i + 1, (i,)) for i in range(num_groups)]
    return [_Window(s, min(s + window, num_groups), tuple(range(s, min(s + window, num_groups))))
            for s in range(0, num_groups, window)]


def pixel_loss(
    decoder,
    latents: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: _losses.LossSpec = "l1",
    mode: str = "sliding",
    window: int = 1,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    micro_batch: int | None = None,
    recompute: bool = False,
    recompute_strips: int = 1,
    offload_cache: bool = False,
    memory_budget_gib: float | None = None,
    recompute_plan: RecomputePlan | None = None,
    tile: tuple[int, int] | None = None,
    tile_halo: int = 4,
    lpips_weights: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Loss between the decoded ``latents`` and ``target``, with ChopGrad-truncated backpropagation.

    Args:
        decoder: a VAE (wrapped with :func:`chopgrad_core.wrap`) or a ``CausalDecoder``.
        latents: (B C T h w). Gradients reach whatever produced it.
        target: (B c F H W) frames in [-1, 1], F as the VAE decodes T latent frames to.
        loss: ``"l1"``, ``"mse"``, ``"ssim"``, ``"ms_ssim"``, ``"lpips"``, a ``PixelLoss``, or a
            mapping of those to weights.
        mode: ``"full"``, ``"block"`` or ``"sliding"`` (see the module docstring).
        window: sliding: D earlier groups (>= 0); block: k groups per window (>= 1).
        weight: per-frame weights, (F,) or (B F).
        mask: per-pixel mask broadcastable as (B|1, 1|c, F, H, W).
        micro_batch: back-propagate this many batch elements (cameras) at a time.
        recompute: checkpoint the decoder's blocks inside a window (explicit cache snapshot/restore).
        recompute_strips: recompute each full-resolution block in this many horizontal strips,
            lower-resolution blocks in proportionally fewer (exact), so only one strip's
            activations live during backward.
        offload_cache: keep the cache at each cut (and sliding's snapshots) in host memory until a
            window reads it (pinned memory and a side stream on CUDA).
        memory_budget_gib: with ``recompute``, plan the exact levers for this frame size so the
            call's working memory fits this many GiB (:func:`chopgrad_core.memory.plan_recompute`:
            strips from the resolution, block inputs offloaded, low-resolution blocks kept);
            ``recompute_strips`` is then ignored. ``None``: ``recompute_strips`` as given.
        recompute_plan: an explicit :class:`~chopgrad_core.memory.RecomputePlan` (overrides both).
        tile: (th, tw) latent pixels per tile of the backward pass; ``tile_halo`` latent pixels of
            context. Approximate gradient; exact forward.
        lpips_weights: local LPIPS weights file for ``loss="lpips"`` (config key chopgrad.lpips_weights).

    Returns:
        A scalar tensor equal to the loss of the normal decode. Its ``.backward()`` sends the
        truncated gradient into ``latents`` and into the decoder parameters that require grad.
    """
    decoder = wrap(decoder)
    _check_args(decoder, latents, target, mode, window, micro_batch, tile, tile_halo)
    _losses.check_mask_and_weight(mask, weight, target)
    frame_loss = _losses.FrameLoss(_losses.resolve(loss, lpips_weights=lpips_weights), target, mask, weight)

    if mode == "full":
        return _full(decoder, latents, frame_loss, recompute)
    params = [p for p in decoder.parameters() if p.requires_grad]
    if recompute_strips < 1:
        raise ChopGradError(f"recompute_strips must be >= 1, got {recompute_strips}")
    if memory_budget_gib is not None and not memory_budget_gib > 0:
        raise ChopGradError(f"memory_budget_gib must be > 0 (GiB of working memory), got {memory_budget_gib!r}")
    micro_batch = micro_batch or latents.shape[0]
    if recompute_plan is None:
        if memory_budget_gib is None:
            recompute_plan = RecomputePlan(strips=recompute_strips)
        else:  # planned per camera chunk: the budget is for micro_batch cameras at a time
            recompute_plan = decoder.plan_recompute(latents[:micro_batch], memory_budget_gib)
    plan = _Plan(decoder, frame_loss, mode, window, micro_batch, recompute, recompute_plan,
                 offload_cache, tile, tile_halo)
    return _TruncatedLoss.apply(plan, latents, *params)


def _check_args(decoder, latents, target, mode, window, micro_batch, tile, tile_halo) -> None:
    if mode not in MODES:
        raise ChopGradError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if not isinstance(window, int) or window < 0:
        raise ChopGradError(f"window must be an integer >= 0 (groups), got {window!r}")
    if mode == "block" and window < 1:
        raise ChopGradError(f"mode='block' needs window >= 1 (groups per block), got {window}")
    if micro_batch is not None and micro_batch < 1:
        raise ChopGradError(f"micro_batch must be >= 1 (batch elements per pass), got {micro_batch}")
    if tile is not None and (len(tile) != 2 or min(tile) < 1 or tile_halo < 0):
        raise ChopGradError(f"tile must be (th, tw) >= 1 latent pixels and tile_halo >= 0, got {tile}, {tile_halo}")
    decoder.check_latents(latents)
    expected = decoder.frames_shape(latents)
    if not isinstance(target, torch.Tensor) or tuple(target.shape) != expected:
        got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        t = latents.shape[2]
        raise ShapeError(
            f"target must have shape (B, c, F, H, W) = {expected}: {t} latent frames decode to {expected[2]} frames "
            f"with the {decoder.family} VAE, at {decoder.spatial_scale}x the latent size; got {got}"
        )
    if not torch.isfinite(target).all():
        raise NonFiniteError(f"target contains NaN or inf values (shape {tuple(target.shape)})")


def _full(decoder: CausalDecoder, latents: torch.Tensor, frame_loss: _losses.FrameLoss, recompute: bool) -> torch.Tensor:
    """Plain autograd through every group: the reference the truncated modes are measured against."""
    cache, total = decoder.init_cache(), None
    with decoder.recomputation() if recompute else contextlib.nullcontext():
        for group in decoder.groups(latents.shape[2]):
            frames, cache = decoder.decode_group(latents[:, :, group.latent], cache, group)
            share = frame_loss(frames, group.pixel)
            total = share if total is None else total + share
    return total


@dataclass
class _Plan:
    decoder: CausalDecoder
    frame_loss: _losses.FrameLoss
    mode: str
    window: int
    micro_batch: int
    recompute: bool
    recompute_plan: RecomputePlan
    offload_cache: bool
    tile: tuple[int, int] | None
    tile_halo: int


class _TruncatedLoss(torch.autograd.Function):
    """Runs every window in ``forward`` and hands the accumulated gradients on in ``backward``."""

    @staticmethod
    def forward(ctx, plan: _Plan, latents: torch.Tensor, *params: torch.nn.Parameter) -> torch.Tensor:
        need_z, need_p = ctx.needs_input_grad[1], any(ctx.needs_input_grad[2:])
        z = latents.detach()
        grad_z = torch.zeros_like(z, dtype=torch.float32) if need_z else None
        grad_p = [torch.zeros_like(p, dtype=torch.float32) for p in params] if need_p else None
        value = torch.zeros((), dtype=torch.float32, device=z.device)
        for b0 in range(0, z.shape[0], plan.micro_batch):
            batch = slice(b0, b0 + plan.micro_batch)
            value += _run_chunk(plan, z[batch], batch, params, grad_z[batch] if need_z else None, grad_p, need_z or need_p)
        ctx.save_for_backward(*(g for g in [grad_z, *(grad_p or [])] if g is not None))
        ctx.need = (need_z, need_p)
        ctx.dtypes = (latents.dtype, *(p.dtype for p in params))
        return value

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        need_z, need_p = ctx.need
        saved = list(ctx.saved_tensors)
        grad_z = (grad_out * saved.pop(0)).to(ctx.dtypes[0]) if need_z else None
        if need_p:
            grad_p = [(grad_out * g).to(dtype) for g, dtype in zip(saved, ctx.dtypes[1:])]
        else:
            grad_p = [None] * (len(ctx.dtypes) - 1)
        return (None, grad_z, *grad_p)


def _run_chunk(plan: _Plan, z: torch.Tensor, batch: slice, params, grad_z, grad_p, need_grad: bool) -> torch.Tensor:
    """All windows for one micro-batch; accumulates gradients into ``grad_z`` / ``grad_p`` in place."""
    decoder, groups = plan.decoder, plan.decoder.groups(z.shape[2])
    leaf = z.detach().requires_grad_(grad_z is not None)
    inputs = ([leaf] if grad_z is not None else []) + (list(params) if grad_p is not None else [])
    offloader = None
    if need_grad and (plan.offload_cache or (plan.recompute and plan.recompute_plan.offload_checkpoints)):
        offloader = _offloader(leaf.device)
        # A cache stored on host must outlive the stores after it while a window may still read
        # it: sliding D keeps D + 1 snapshots and re-reads the one it started from in backward.
        offloader.ring = plan.window + 2 if plan.mode == "sliding" else 2
        offloader.restart()  # the same host buffers every call: pinned once, by the first call
    recompute = (decoder.recomputation(plan.recompute_plan, offloader) if (plan.recompute and need_grad)
                 else contextlib.nullcontext())
    run = _run_tiled if (plan.tile is not None and need_grad) else _run_windows
    with recompute:
        return run(plan, decoder, groups, leaf, batch, inputs, grad_z, grad_p, need_grad,
                   offloader if plan.offload_cache else None)


def _accumulate(grads, grad_z, grad_p) -> None:
    grads = list(grads)
    if grad_z is not None:
        g = grads.pop(0)
        if g is not None:
            grad_z += g
    if grad_p is not None:
        for acc, g in zip(grad_p, grads):
            if g is not None:
                acc += g


def _run_windows(plan, decoder, groups, leaf, batch, inputs, grad_z, grad_p, need_grad, offloader) -> torch.Tensor:
    snapshots: dict[int, CausalCache] = {0: decoder.init_cache()}  # cache before group i, detached
    value = torch.zeros((), dtype=torch.float32, device=leaf.device)
    windows = _windows(plan.mode, plan.window, len(groups), need_grad)
    # With an offloader every snapshot waits in host memory until a window starts from it.
    # Adapters that stream hand each slot of the cut cache to the host as it is written and fetch
    # it back while the next window starts; for the others whole caches move between windows.
    streamed = offloader is not None and decoder.streams_cache
    hosted: set[int] = set()  # snapshots whose whole cache is in host memory (not streamed)
    for n, win in enumerate(windows):
        next_start = windows[n + 1].start if n + 1 < len(windows) else len(groups)
        # A snapshot no later window starts from is handed over, so it is freed while decoding.
        cache, share = (snapshots.pop(win.start) if next_start > win.start else snapshots[win.start]), None
        if win.start in hosted:
            cache = offloader.fetch_tree(cache)
        with torch.set_grad_enabled(need_grad):
            # 1. Decode the window with gradient, from a snapshot whose past is a constant.
            for group in groups[win.start : win.stop]:
                stream = {}
                if streamed:  # the cache at the cut goes to host (after the last window too: off the device)
                    stream = dict(offload=offloader, store=group.index == win.stop - 1)
                frames, cache = decoder.decode_group(leaf[:, :, group.latent], cache, group,
                                                     consume=win.start not in snapshots or group.index > win.start,
                                                     **stream)
                if group.index in win.loss_groups:
                    part = plan.frame_loss(frames, group.pixel, batch)
                    share = part if share is None else share + part
            # 2. The cache after the window is exact (the forward is never truncated); detaching it
            #    is the cut: later windows treat it as a constant.
            snapshots[win.stop] = cache.detach()
            del frames, cache
            if offloader is not None and not streamed:
                snapshots[win.stop] = offloader.store_tree(snapshots[win.stop])
                hosted.add(win.stop)
            # 3. Backpropagate this window alone; its activations are freed before the next one.
            if need_grad:
                _accumulate(torch.autograd.grad(share, inputs, allow_unused=True), grad_z, grad_p)
                decoder.window_done()
        value += share.detach()
        # Keep only the snapshots that later windows start from.
        for key in [k for k in snapshots if k < next_start]:
            del snapshots[key]
    return value


_OFFLOADERS: dict[torch.device, CacheOffloader] = {}


def _offloader(device: torch.device) -> CacheOffloader:
    """One offloader per device for the whole process: its pinned host buffers (one per cache slot
    and shape, about 2.7 GiB for the Wan 2.1 VAE at 480x832) are pinned once and serve every camera
    and every later call. Each new resolution adds its own; :func:`release_offload_buffers` frees all."""
    if device not in _OFFLOADERS:
        _OFFLOADERS[device] = CacheOffloader(device)
    return _OFFLOADERS[device]


def release_offload_buffers() -> None:
    """Drop the pinned host buffers ``offload_cache`` keeps between calls."""
    _OFFLOADERS.clear()


def _tiles(h: int, w: int, tile: tuple[int, int], halo: int):
    """(interior rows, interior cols, crop rows, crop cols) covering an h x w latent frame."""
    th, tw = tile
    for r0 in range(0, h, th):
        for c0 in range(0, w, tw):
            rows, cols = slice(r0, min(r0 + th, h)), slice(c0, min(c0 + tw, w))
            crop_r = slice(max(0, rows.start - halo), min(h, rows.stop + halo))
            crop_c = slice(max(0, cols.start - halo), min(w, cols.stop + halo))
            yield rows, cols, crop_r, crop_c


def _run_tiled(plan, decoder, groups, leaf, batch, inputs, grad_z, grad_p, need_grad, offloader) -> torch.Tensor:
    h, w = leaf.shape[-2:]
    s = decoder.spatial_scale
    snapshots: dict[int, CausalCache] = {0: decoder.init_cache()}
    decoded = 0  # groups decoded exactly so far
    value = torch.zeros((), dtype=torch.float32, device=leaf.device)
    windows = _windows(plan.mode, plan.window, len(groups), need_grad)
    for n, win in enumerate(windows):
        # 1. Exact forward of the window's new groups on the full frame, without gradient: frames,
        #    loss value, the next cache, and the gradient of the loss w.r.t. the frames.
        pixel_grads: dict[int, torch.Tensor] = {}
        cache = snapshots[decoded]
        for group in groups[decoded : win.stop]:
            with torch.no_grad():
                frames, cache = decoder.decode_group(leaf[:, :, group.latent], cache, group)
            snapshots[group.index + 1] = cache
            if group.index in win.loss_groups:
                frames.requires_grad_(True)
                with torch.enable_grad():
                    part = plan.frame_loss(frames, group.pixel, batch)
                    pixel_grads[group.index] = torch.autograd.grad(part, frames)[0]
                value += part.detach()
            del frames
        decoded = win.stop
        # 2. Backward tile by tile: re-decode the window on the tile plus halo from the cropped
        #    snapshot, and pull the exact pixel gradient of the tile's interior through it.
        for rows, cols, crop_r, crop_c in _tiles(h, w, plan.tile, plan.tile_halo):
            cache = snapshots[win.start].crop(crop_r, crop_c, (h, w))
            outs, grads = [], []
            inner = (slice((rows.start - crop_r.start) * s, (rows.stop - crop_r.start) * s),
                     slice((cols.start - crop_c.start) * s, (cols.stop - crop_c.start) * s))
            with torch.enable_grad():
                for group in groups[win.start : win.stop]:
                    z = leaf[:, :, group.latent, crop_r, crop_c]
                    frames, cache = decoder.decode_group(z, cache, group)
                    if group.index in pixel_grads:
                        outs.append(frames[..., inner[0], inner[1]])
                        grads.append(pixel_grads[group.index][..., rows.start * s : rows.stop * s,
                                                              cols.start * s : cols.stop * s])
                del cache, frames
                _accumulate(torch.autograd.grad(outs, inputs, grads, allow_unused=True), grad_z, grad_p)
            del outs
        next_start = windows[n + 1].start if n + 1 < len(windows) else len(groups)
        for key in [k for k in snapshots if k < min(next_start, decoded)]:
            del snapshots[key]
    return value
