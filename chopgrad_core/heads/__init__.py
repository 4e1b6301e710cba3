"""Task heads: one-step video restoration with ChopGrad pixel losses, for any video.

    head = make_head({"name": "sr", "scale": 2})       # or "inpaint", "enhance"
    model = OneStepRestorer(ModelConfig(), head.extra_channels)
    sample = head.degrade(clean, generator)             # training: input, baseline (and mask)
    model.losses(head, sample, clean, ChopGradConfig(loss="mse"))["total"].backward()
    restored = model.restore(head, head.prepare(video))

Training: ``python -m chopgrad_core.finetune task=sr|inpaint|enhance``; applying a checkpoint to a
video: ``python -m chopgrad_core.restore``. The shared model and recipe: ``restoration.py``.
"""

from __future__ import annotations

from typing import Any, Mapping

from chopgrad_core.errors import ChopGradError
from chopgrad_core.heads.enhance import EnhanceConfig, EnhanceHead
from chopgrad_core.heads.inpaint import InpaintConfig, InpaintHead
from chopgrad_core.heads.restoration import (HeadConfig, ModelConfig, OneStepRestorer, Sample, check_frames,
                                             load_checkpoint, save_checkpoint)
from chopgrad_core.heads.sr import SRConfig, SRHead

# task name -> (config class, head class)
HEADS = {"sr": (SRConfig, SRHead), "inpaint": (InpaintConfig, InpaintHead), "enhance": (EnhanceConfig, EnhanceHead)}


def make_head(config: Mapping[str, Any] | HeadConfig):
    """A head from its config (dataclass or mapping with ``name``); unknown keys name the task."""
    if isinstance(config, HeadConfig):
        return HEADS[config.name][1](config)
    name = config.get("name")
    if name not in HEADS:
        raise ChopGradError(f"task.name={name!r} is unknown; choose one of {', '.join(HEADS)}")
    cls, head = HEADS[name]
    try:
        return head(cls(**config))
    except TypeError as e:  # an unknown key
        raise ChopGradError(f"task={name}: {e}; the keys are those of {cls.__module__}.{cls.__name__}") from e


__all__ = ["HEADS", "make_head", "HeadConfig", "ModelConfig", "OneStepRestorer", "Sample", "check_frames",
           "save_checkpoint", "load_checkpoint", "SRConfig", "SRHead", "InpaintConfig", "InpaintHead",
           "EnhanceConfig", "EnhanceHead"]
