"""Planning the exact memory levers from the frame size and a memory budget.

The levers of :mod:`chopgrad_core.engine` trade time for memory, and how much of each a call needs
depends on the frame size: a Wan 2.1 decoder's full-resolution feature map of one frame group (96
channels x 4 frames, bf16) is 0.29 GiB at 480x832 and 1.03 GiB at 896x1600, and everything the
backward pass holds scales with it. A fixed strip count (issue 2's 4) keeps 480x832 under 6 GiB but
leaves 896x1600 at 19 GiB. :func:`plan_recompute` chooses instead, per call:

- ``strips``: how many horizontal strips a full-resolution block is recomputed in (backward) and
  run in (forward, without gradient). One strip's fp32 norm temporaries are the largest transient;
  the strip height is chosen so they fit what the budget leaves.
- ``offload_checkpoints``: the inputs a recomputed block keeps for its backward (its input feature
  map and its cache slots) wait in pinned host memory and come back one block ahead of the
  backward pass, so the device holds one block's worth of them, not a whole group's.
- ``keep_below``: selective recomputation. Blocks whose input is at most ``keep_below`` times the
  latent size keep their activations (plain autograd) instead of being recomputed: at low
  resolution a block's activations are small and its convolutions are a large share of the
  decoder's compute (the mid block and the first up block have 384 channels), so storing them buys
  back recomputation time cheaply.

The estimates are in units of the full-resolution map (``unit``), with coefficients read off the
fake-tensor memory model (``benchmarks/chopgrad_memory.py --scenario model-896p``). They are a
plan, not a guarantee: the benchmark measures what a plan really peaks at.

Shape legend: h w latent size, H W pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
_MARGIN = 0.85  # the share of a budget a plan fills: 15% for allocator rounding and workspaces


@dataclass(frozen=True)
class RecomputePlan:
    """How a decoder recomputes its blocks (``CausalDecoder.recomputation``); every field is exact."""

    strips: int = 1
    """Horizontal strips per full-resolution block, fewer at lower resolutions (forward and backward)."""
    offload_checkpoints: bool = False
    """Block inputs and cache slots saved for backward wait in host memory (needs an offloader)."""
    keep_below: int = 0
    """Blocks whose input is at most this many times the latent size keep their activations (0: none)."""
    offload_min_bytes: int = 64 * 1024**2
    """Saved tensors smaller than this stay on the device (copies of small maps cost more than they save)."""
    reuse_stats_pass: bool = False
    """CogVideoX strips: a resnet keeps conv1's output from its statistics pass (one map of the
    block's output size, in the forward only) instead of recomputing it for the strips."""

    keep_conv1_output: bool = False
    """CogVideoX strips: a resnet's backward keeps conv1's output from its first pass for the second
    (one map of the block's output size) instead of recomputing it there."""

    prefetch_cache: bool = True
    """Streamed cache (CogVideoX with ``offload_cache``): the next block's input cache entries start
    coming back from host memory while a block runs (False: once it has run, so they are not on the
    device during its forward; the copy then overlaps the next block's launch instead)."""

    def __post_init__(self) -> None:
        if self.strips < 1:
            raise ValueError(f"strips must be >= 1, got {self.strips}")
        if self.keep_below < 0:
            raise ValueError(f"keep_below must be >= 0, got {self.keep_below}")


# Coefficients in units of one full-resolution feature map of a group (``unit``), read off the
# fake-tensor memory model of the Wan 2.1 VAE (model-896p / model-480p scenarios):
# - held through the backward pass with checkpoints offloaded: the output gradient and the input
#   gradient accumulator (2 units), the block's input slots and the next block's, prefetched (2),
#   a strip's input pieces and the loss's buffers (0.6);
_HELD = 4.6
# - one strip's transients per row of its map (halo included): about eight fp32 norm temporaries;
_STRIP_PER_ROW = 16.0
_HALO_ROWS = 4  # a strip's context rows at full resolution (2 per side)
# - the block inputs of a group kept on the device when they are not offloaded: four at full
#   resolution, four at half (half the channels' bytes per pixel, a quarter of the pixels, twice
#   the channels), and the small ones below;
_INPUTS_ON_DEVICE = 6.5
# - activations a kept (not recomputed) level stores: the mid and first up block at the latent
#   size (level 1) are small; the second up block (level 2, 384 channels at a quarter of the frame)
#   stores about 7.5 units; level 4 (about 15 units) never pays.
_KEEP_COST = {2: 8.5, 1: 1.0, 0: 0.0}
_MIN_ROWS = 64  # thinner strips cost more in halo and launches than a kept level saves


def feature_unit_bytes(channels: int, frames: int, height: int, width: int, element_size: int) -> int:
    """Bytes of one full-resolution feature map of a frame group."""
    return channels * frames * height * width * element_size


def plan_recompute(*, height: int, width: int, channels: int, frames: int, element_size: int,
                   budget_gib: float | None, strips: int | None = None,
                   offload_available: bool = True) -> RecomputePlan:
    """A :class:`RecomputePlan` for decoding H x W frames within ``budget_gib`` (working memory).

    With a budget: checkpoints offloaded, the most kept levels whose strips stay at least
    ``_MIN_ROWS`` rows high, and the fewest strips that fit. ``strips`` given (>= 1) is used as
    is. Without a budget: issue 2's fixed plan (4 strips, nothing offloaded or kept).
    """
    if budget_gib is None:
        return RecomputePlan(strips=strips or 4)
    if budget_gib <= 0:
        raise ValueError(f"memory budget must be > 0 GiB, got {budget_gib}")
    unit = feature_unit_bytes(channels, frames, height, width, element_size)
    budget = budget_gib * GIB * _MARGIN / unit  # in units
    per_row = _STRIP_PER_ROW / 2 * (2.0 if element_size < 4 else 1.0) / height  # norms upcast to fp32
    # Cheapest in time first: block inputs on the device (host copies cost bus time a fast decoder
    # does not hide at 480p), the most kept levels; then block inputs offloaded.
    options = [(False, 2), (False, 1), (True, 2), (True, 1), (False, 0), (True, 0)]
    for offload, keep in options:
        if offload and not offload_available:
            continue
        free = budget - _HELD - (0.0 if offload else _INPUTS_ON_DEVICE) - _KEEP_COST[keep]
        rows = int(free / per_row) - _HALO_ROWS
        if rows >= min(_MIN_ROWS, height) or (keep == 0 and offload and rows >= 8):
            return RecomputePlan(strips=strips or max(1, -(-height // rows)), offload_checkpoints=offload,
                                 keep_below=keep)
    # The budget is below what the levers reach: every lever on, strips as thin as they go.
    return RecomputePlan(strips=strips or max(1, height // 8), offload_checkpoints=offload_available)


# CogVideoX (``plan_recompute_cogvideox``), in units of the decoder's full-resolution map of a group
# (128 channels x 8 or 9 frames), read off the fake-tensor memory model (``--scenario model-issue15-c``;
# 480x720, 17 frames: 8.57 / 5.63 GiB at 3 / 6 strips, so 3.42 units + 23.8 units per frame height
# of strip rows):
# - held through the backward pass of the first full-resolution resnet, whatever the strips: its
#   input gradient (the 256-channel upsampled map: 2 units), its output gradient (1), the input
#   cache entries on their way back, the loss's buffers;
_COG_HELD = 3.6
# - the block inputs of a group when they stay on the device (not offloaded): about 7.4 units at
#   480x720 (every resnet's input at full and half resolution);
_COG_INPUTS_ON_DEVICE = 9.0
# - one strip's working set in backward per row (256 channels in, the causal conv's two cached
#   frames concatenated, two strips' input rows: the one recomputed and the next one arriving);
_COG_STRIP_PER_ROW = 23.8
_COG_HALO_ROWS = 4
# - the forward's peak (the first full-resolution resnet of a group: its 256-channel input, its output,
#   the cache entries; 848x1600, 17 frames: 15.76 GiB = 5.4 units) with conv1's output of the statistics
#   pass kept for the strips (``reuse_stats_pass``: 1 unit, and 0.44 of conv1's cache entries). At
#   480x720 the backward peaks higher (memory model: 6.37 GiB with or without it), so it costs nothing there.
_COG_FORWARD_REUSE = 6.9
# - the forward's peak without that reuse (5.4 units at 848x1600), of which the next resnet's input cache
#   entries, fetched ahead while the block runs (``prefetch_cache``), are 0.44 (two 128-channel frames
#   for each of its two causal convs). Where the budget is below it they come after the block instead.
_COG_FORWARD = 5.4
# - conv1's output kept between a resnet's two backward passes (``keep_conv1_output``): one map of its
#   output (memory model, 480x720, 17 frames, 5 strips: 6.37 -> 7.11 GiB; measured 6.82 -> 7.56 GiB).
_COG_KEEP_CONV1 = 1.0
# The margin that decision leaves: the memory model misses a constant ~0.45 GiB of CogVideoX's measured
# peaks at 480x720 (6.37 / 6.82 GiB, 7.11 / 7.56 GiB, one H200), 6-7% of a budget of 8, not 15%; at
# budget 8 it keeps the output (measured 7.56 GiB: 1.90-1.94x plain D=0 against 1.96-2.02x without).
_COG_KEEP_MARGIN = 0.92


def plan_recompute_cogvideox(*, height: int, width: int, channels: int, frames: int, element_size: int,
                             budget_gib: float | None, strips: int | None = None,
                             offload_available: bool = True) -> RecomputePlan:
    """A :class:`RecomputePlan` for the CogVideoX decoder (strips through its group norms).

    Its group norms need a statistics pass per strip set (see ``adapters/cogvideox.py``), and no
    level is kept (``keep_below`` is Wan's). Checkpoint inputs stay on the device where the budget
    allows; the fewest strips that fit; resnets reuse conv1's output of their statistics pass where
    the forward's peak with it fits (``reuse_stats_pass``), and the streamed cache is fetched a block
    ahead only where the forward's peak with it fits (``prefetch_cache``).
    """
    if budget_gib is None:
        return RecomputePlan(strips=strips or 1)
    if budget_gib <= 0:
        raise ValueError(f"memory budget must be > 0 GiB, got {budget_gib}")
    unit = feature_unit_bytes(channels, frames, height, width, element_size)
    budget = budget_gib * GIB * _MARGIN / unit
    per_row = _COG_STRIP_PER_ROW / height
    for offload in (False, True):
        if offload and not offload_available:
            continue
        free = budget - _COG_HELD - (0.0 if offload else _COG_INPUTS_ON_DEVICE)
        rows = int(free / per_row) - _COG_HALO_ROWS
        # Thin strips cost halo rows and launches, but CogVideoX has no kept levels to trade instead.
        if rows >= min(_MIN_ROWS, height) or (offload and rows >= 16):
            n = strips or max(1, -(-height // rows))
            # conv1's output kept in backward where it fits beside strips of the same height, checked
            # against the measured peaks rather than the generic 15% margin (see _COG_KEEP_MARGIN).
            room = free + budget_gib * GIB * (_COG_KEEP_MARGIN - _MARGIN) / unit - _COG_KEEP_CONV1
            keep = int(room / per_row) - _COG_HALO_ROWS >= -(-height // n)
            return RecomputePlan(strips=n, offload_checkpoints=offload,
                                 reuse_stats_pass=budget >= _COG_FORWARD_REUSE,
                                 keep_conv1_output=keep, prefetch_cache=budget >= _COG_FORWARD)
    return RecomputePlan(strips=strips or max(1, height // 8), offload_checkpoints=offload_available,
                         prefetch_cache=False)
