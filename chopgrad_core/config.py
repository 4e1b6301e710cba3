"""Configuration of the ChopGrad pixel loss; ``configs/chopgrad/<preset>.yaml`` mirror it 1:1.

Presets (``PRESETS``, Hydra ``chopgrad=<name>``):

- ``default``: the paper's sliding window, D = 1, no memory levers.
- ``low_memory``: D = 0 with every exact lever: cameras one at a time, decoder blocks recomputed
  (full-resolution ones in 4 horizontal strips) and the cache at each cut held in host memory.
  Measured on an H100 (full-size Wan 2.1 VAE, bf16, 480x832): 5.38-5.41 GiB at 17 to 121 frames
  with 1 and 6 cameras, at 1.45-1.47x the time of plain D = 0, whose peak is 19.2 GiB
  (benchmarks/RESULTS.md, issue 2). Same gradient as plain D = 0.
  Issue 15: a memory budget (``memory_budget_gib``, 6 GiB here) plans the levers per frame size
  instead of a fixed strip count: strips from the resolution, block inputs in host memory, the
  low-resolution blocks kept rather than recomputed (``chopgrad_core.memory``). At 896x1600 set
  ``chopgrad.memory_budget_gib=8`` (6 would need thin, slow strips). On one H200 (issue 15 part h,
  bf16): 4.70-4.72 GiB at 1.28-1.29x plain D = 0 at 480x832 (17-121 frames); 6.53-6.64 GiB at
  1.37x at 896x1600 (17-241 frames, 1 and 6 cameras). Measured in benchmarks/RESULTS.md, issue 15.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from chopgrad_core.engine import MODES
from chopgrad_core.errors import ChopGradError
from chopgrad_core.losses import LOSS_NAMES


@dataclass(kw_only=True)
class ChopGradConfig:
    loss: str = "l1"
    """Pixel loss: one of l1, mse, ssim, ms_ssim, lpips."""
    mode: str = "sliding"
    """Truncation schedule: full (reference, memory grows with length), block or sliding."""
    window: int = 1
    """sliding: D earlier frame groups each loss reaches (paper: D); block: k groups per window."""
    micro_batch: Optional[int] = None
    """Batch elements (cameras) back-propagated at a time; None = the whole batch at once."""
    recompute: bool = False
    """Checkpoint the decoder's blocks inside a window (exact; about a third more compute)."""
    recompute_strips: int = 1
    """Recompute each full-resolution decoder block in this many horizontal strips, lower-resolution
    blocks in fewer (exact; CogVideoX: group-norm statistics in a pass of their own)."""
    offload_cache: bool = False
    """Hold the cache at each cut (sliding: every snapshot) in host memory until a window reads it (exact)."""
    memory_budget_gib: Optional[float] = None
    """With recompute: plan the exact levers for the frame size so one camera's working memory fits
    this many GiB (strips from the resolution, block inputs in host memory, low-resolution blocks
    kept; chopgrad_core.memory); recompute_strips is then ignored. None = recompute_strips as given."""
    tile: Optional[list[int]] = None
    """[th, tw] latent pixels per backward tile (approximate gradient, exact loss value); None = off."""
    tile_halo: int = 4
    """Latent pixels of context decoded around each backward tile."""
    lpips_weights: Optional[str] = None
    """Local LPIPS weights file; required when loss=lpips. Nothing is ever downloaded."""

    def __post_init__(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise ChopGradError(f"chopgrad.loss={self.loss!r} is unknown; choose one of {', '.join(LOSS_NAMES)}")
        if self.mode not in MODES:
            raise ChopGradError(f"chopgrad.mode={self.mode!r} is unknown; choose one of {', '.join(MODES)}")
        if self.window < (1 if self.mode == "block" else 0):
            raise ChopGradError(f"chopgrad.window={self.window} is too small for mode={self.mode!r} "
                                f"(sliding: >= 0, block: >= 1)")
        if self.memory_budget_gib is not None and not self.memory_budget_gib > 0:
            raise ChopGradError(f"chopgrad.memory_budget_gib={self.memory_budget_gib!r} must be > 0 (GiB), "
                                "or null for the fixed recompute_strips")
        if self.loss == "lpips" and not self.lpips_weights:
            raise ChopGradError("chopgrad.loss=lpips needs chopgrad.lpips_weights=/path/to/lpips.safetensors")

    def pixel_loss_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`chopgrad_core.pixel_loss`."""
        kw = asdict(self)
        kw["tile"] = tuple(self.tile) if self.tile else None
        return kw


#: Named configurations; ``configs/chopgrad/<name>.yaml`` holds the same values.
PRESETS: dict[str, ChopGradConfig] = {
    "default": ChopGradConfig(),
    "low_memory": ChopGradConfig(window=0, micro_batch=1, recompute=True, recompute_strips=4, offload_cache=True,
                                 memory_budget_gib=6.0),
}
