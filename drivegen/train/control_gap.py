"""Does a model use its controls? The flow-matching loss of every clip with its own conditions
against the same clip with another clip's conditions (layout, boxes, cameras).

At sigma = 1 the input is pure noise, so everything the model knows about the clip comes from
the conditions: a model that ignores them scores the same with its own and with swapped ones
(``gap`` ~ 0), however low its loss. Noise is seeded per clip, so the two sides see the same noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from drivegen.errors import DrivegenError


@torch.no_grad()
def control_gap(model, clips: list[tuple], sigma: float = 1.0, seed: int = 0) -> dict[str, float]:
    """``clips``: ``prepare`` outputs (x0, frames, control, cond), at least two.

    Returns the mean flow loss with the clip's own conditions (``own``), with the conditions of the
    clip half the list away (``swapped``), and ``gap = swapped - own`` (> 0: the controls help).
    """
    if len(clips) < 2:
        raise DrivegenError(f"control_gap needs at least 2 clips to swap conditions, got {len(clips)}")
    was_training = model.training
    model.eval()
    n, own, swapped = len(clips), 0.0, 0.0
    for i, (x0, frames, control, cond) in enumerate(clips):
        _, _, other_control, other_cond = clips[(i + n // 2) % n]
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i)).to(x0)
        x_t = (1 - sigma) * x0 + sigma * noise
        t = torch.full((x0.shape[0],), sigma * 1000.0, device=x0.device)
        for c, cd, own_side in ((control, cond, True), (other_control, other_cond, False)):
            loss = float(F.mse_loss(model(x_t, t, c, cd, tuple(frames.shape[-2:])).float(), (noise - x0).float()))
            own, swapped = (own + loss / n, swapped) if own_side else (own, swapped + loss / n)
    model.train(was_training)
    return {"own": own, "swapped": swapped, "gap": swapped - own}
