"""Task heads: one-step video restoration with ChopGrad pixel losses, for any video.

    head = make_head({"name": "sr", "scale": 2})       # or "inpaint", "enhance"
    model = OneStepRestorer(HeadModelConfig(), head.extra_channels)
    sample = head.degrade(clean, generator)             # training: input, baseline (and mask)
    model.losses(head, sample, clean, ChopGradConfig(loss="mse"))["total"].backward()
    restored = model.restore(head, head.prepare(video))

Layout of this package (everything the heads need lives here; ``chopgrad_core`` itself holds the
engine, the losses, video and atomic IO, progress bars and the errors):

- ``restoration.py``: the shared one-step model (:class:`OneStepRestorer`), its config
  (:class:`HeadModelConfig`), the per-task base (:class:`HeadConfig`, :class:`Head`) and the
  checkpoint file (:func:`save_head` / :func:`load_head`);
- ``sr.py``, ``inpaint.py``, ``enhance.py``: one task each (conditioning, degradation, loss recipe),
  with ``degrade.py`` holding the shared degradations;
- ``data.py``: clips from a folder of videos (:class:`HeadDataConfig`);
- ``metrics.py``: PSNR, SSIM, LPIPS, flicker, the comparison table and strip;
- ``finetune.py``: ``python -m chopgrad_core.heads.finetune task=sr|inpaint|enhance`` (Hydra; the
  configs ``configs/finetune/`` are validated against its dataclasses);
- ``restore.py``: ``python -m chopgrad_core.heads.restore CHECKPOINT INPUT OUTPUT.mp4``.
"""

from __future__ import annotations

from typing import Any, Mapping

from chopgrad_core.errors import HeadConfigError
from chopgrad_core.heads.enhance import EnhanceConfig, EnhanceHead
from chopgrad_core.heads.inpaint import InpaintConfig, InpaintHead
from chopgrad_core.heads.restoration import (HeadConfig, HeadModelConfig, OneStepRestorer, Sample, check_frames,
                                             load_head, save_head)
from chopgrad_core.heads.sr import SRConfig, SRHead

# task name -> (config class, head class)
HEADS = {"sr": (SRConfig, SRHead), "inpaint": (InpaintConfig, InpaintHead), "enhance": (EnhanceConfig, EnhanceHead)}


def make_head(config: Mapping[str, Any] | HeadConfig):
    """A head from its config (dataclass or mapping with ``name``); unknown keys name the task."""
    if isinstance(config, HeadConfig):
        if config.name not in HEADS or type(config) is not HEADS[config.name][0]:
            raise HeadConfigError(f"task.name={config.name!r} does not match its config {type(config).__name__}; "
                                  f"choose the task with task=<name> (one of {', '.join(HEADS)}), not task.name")
        return HEADS[config.name][1](config)
    name = config.get("name")
    if name not in HEADS:
        raise HeadConfigError(f"task.name={name!r} is unknown; choose one of {', '.join(HEADS)}")
    cls, head = HEADS[name]
    try:
        return head(cls(**config))
    except TypeError as e:  # an unknown key
        raise HeadConfigError(f"task={name}: {e}; the keys are those of {cls.__module__}.{cls.__name__}") from e


__all__ = ["HEADS", "make_head", "HeadConfig", "HeadModelConfig", "OneStepRestorer", "Sample", "check_frames",
           "save_head", "load_head", "SRConfig", "SRHead", "InpaintConfig", "InpaintHead",
           "EnhanceConfig", "EnhanceHead"]
