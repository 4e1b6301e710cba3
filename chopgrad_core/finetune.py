"""``python -m chopgrad_core.finetune task=sr|inpaint|enhance [data=...] [key=value ...]``: train a head.

Fine-tunes a one-step restoration model (``chopgrad_core.heads.restoration``) for the chosen task
on a folder of videos, then evaluates it on held-out clips against the task's plain baseline.
With no arguments: the sample logs' camera videos (made with ``python -m drivegen.sample_data`` if
missing and installed; see ``data.prepare``), a tiny random-initialised Wan VAE and transformer,
a couple of minutes on the CPU. Writes under ``train.out``:

- ``head.safetensors``: the checkpoint (atomic), for ``python -m chopgrad_core.restore``;
- ``eval.md`` / ``eval.json``: PSNR, SSIM, LPIPS (with ``chopgrad.lpips_weights``) and flicker,
  restored vs baseline; ``comparison.png``: a held-out clip, row by row; ``history.json``: losses.

Configs: ``configs/finetune/finetune.yaml`` with the groups ``task/`` and ``data/``; every key
mirrors a dataclass field (``FinetuneConfig`` here, ``ModelConfig`` and ``HeadConfig`` subclasses
in ``chopgrad_core.heads``, ``DataConfig`` in ``chopgrad_core.heads.data``, ``ChopGradConfig``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from chopgrad_core.config import ChopGradConfig
from chopgrad_core.errors import ChopGradError, NonFiniteError
from chopgrad_core.heads import HeadConfig, ModelConfig, OneStepRestorer, make_head, save_checkpoint
from chopgrad_core.heads.data import DataConfig, VideoSet
from chopgrad_core.metrics import Scorer, Table, comparison_strip


@dataclass(kw_only=True)
class TrainConfig:
    """The optimisation (``train:`` in configs/finetune/finetune.yaml)."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 2
    """Clips per step."""
    lr: float = 1e-3
    """AdamW learning rate (transformer, context token and decoder)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    seed: int = 0
    """Seeds the model, the clips and their degradations."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    out: str = "outputs/finetune"
    """Checkpoint, evaluation table, comparison strip and loss history go here."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.grad_clip <= 0:
            raise ChopGradError("train.steps must be >= 0, train.batch_size >= 1, train.lr and train.grad_clip > 0")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ChopGradError(f"train.device={self.device!r} must be cpu, cuda or auto")


@dataclass(kw_only=True)
class FinetuneConfig:
    task: HeadConfig
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    chopgrad: ChopGradConfig = field(default_factory=lambda: ChopGradConfig(loss="mse"))
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.data.degraded_root and self.task.name != "enhance":
            raise ChopGradError(f"data.degraded_root gives same-size degraded/clean pairs, which task={self.task.name} "
                                "does not take; use task=enhance or set data.degraded_root=null")


def to_config(raw: dict[str, Any]) -> FinetuneConfig:
    """From a plain nested dict (Hydra's composed config); unknown keys are named."""
    def build(cls, key):
        try:
            return cls(**raw.get(key, {}))
        except TypeError as e:
            raise ChopGradError(f"{key}: {e}; the keys are the fields of {cls.__module__}.{cls.__name__}") from e

    return FinetuneConfig(task=make_head(raw["task"]).config, data=build(DataConfig, "data"),
                          model=build(ModelConfig, "model"), chopgrad=build(ChopGradConfig, "chopgrad"),
                          train=build(TrainConfig, "train"))


# ----------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def evaluate(model: OneStepRestorer, head, data: VideoSet, scorer: Scorer, device: torch.device,
             strip: str | Path | None = None) -> Table:
    """Restored vs the plain baseline on every held-out clip (fixed clips and degradations)."""
    table = Table(scorer.names)
    baseline = f"baseline: {head.baseline_name}"
    for i, (clean, degraded) in enumerate(data.evaluation()):
        g = torch.Generator().manual_seed(10_000 + i)
        sample = head.prepare(degraded) if degraded is not None else head.degrade(clean, g)
        restored = model.restore(head, sample.to(device)).cpu()
        table.add(baseline, scorer(sample.baseline, clean))
        table.add("restored", scorer(restored, clean))
        if i == 0 and strip is not None:
            rows = {}
            if sample.input.shape != clean.shape:  # sr: the low-resolution input, pixels enlarged
                rows["input"] = F.interpolate(sample.input[0].transpose(0, 1), size=clean.shape[-2:],
                                              mode="nearest").transpose(0, 1)
            rows.update({head.baseline_name: sample.baseline, "restored": restored, "target": clean})
            comparison_strip(strip, rows)
    return table


def finetune(cfg: FinetuneConfig, progress: bool = True) -> dict[str, Any]:
    """Train, save, evaluate. Returns the evaluation means, file paths, loss history, model and head."""
    t0 = time.perf_counter()
    device = _device(cfg.train.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # random-weight decoders drift into denormals, ~30x slower on CPU
    torch.manual_seed(cfg.train.seed)
    out = Path(cfg.train.out)

    # 1. Data, head, model.
    head = make_head(cfg.task)
    data = VideoSet(cfg.data)
    model = OneStepRestorer(cfg.model, head.extra_channels).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.train.seed)

    # 2. Train.
    history: list[dict[str, float]] = []
    bar = tqdm(range(cfg.train.steps), desc=f"finetune {head.name}", disable=not progress, dynamic_ncols=True)
    for step in bar:
        clean, degraded = data.batch(cfg.train.batch_size, g)
        sample = head.prepare(degraded) if degraded is not None else head.degrade(clean, g)
        losses = model.losses(head, sample.to(device), clean.to(device), cfg.chopgrad)
        if not torch.isfinite(losses["total"]):
            raise NonFiniteError(f"loss is not finite at step {step}: "
                                 + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                                 + "; lower train.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
        bar.set_postfix({k: f"{v:.4f}" for k, v in history[-1].items()})
    train_s = time.perf_counter() - t0

    # 3. Save and evaluate on held-out clips.
    checkpoint = save_checkpoint(out / "head.safetensors", model, head, extra={"steps": cfg.train.steps})
    model.eval()
    scorer = Scorer(cfg.chopgrad.lpips_weights)
    table = evaluate(model, head, data, scorer, device, strip=out / "comparison.png")
    note = "" if scorer.lpips is not None else "LPIPS skipped: set chopgrad.lpips_weights to a local weights file."
    rendered = table.render(note)
    (out / "eval.md").write_text(rendered)
    (out / "eval.json").write_text(json.dumps(table.as_dict(), indent=1))
    (out / "history.json").write_text(json.dumps(history))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))

    # 4. Summary.
    means = table.as_dict()
    base, ours = means[f"baseline: {head.baseline_name}"], means["restored"]
    print(f"\n{head.name}: held-out clips of {', '.join(Path(v.name).name for v in data.held_out)} "
          f"({len(data.train)} training videos, {cfg.train.steps} steps, {train_s:.0f} s)\n")
    print(rendered)
    print(f"PSNR {ours['psnr']:.2f} dB vs {base['psnr']:.2f} dB ({head.baseline_name}): "
          f"{ours['psnr'] - base['psnr']:+.2f} dB. Wrote {checkpoint}, {out / 'eval.md'}, {out / 'comparison.png'}")
    return {"metrics": means, "checkpoint": str(checkpoint), "history": history, "train_seconds": train_s,
            "out": str(out), "model": model, "head": head}


def _main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="../configs/finetune", config_name="finetune")
    def main(cfg: DictConfig) -> None:
        finetune(to_config(OmegaConf.to_container(cfg, resolve=True)))

    main()


if __name__ == "__main__":
    _main()
