"""``python -m chopgrad_core.heads.finetune task=sr|inpaint|enhance [data=...] [key=value ...]``: train a head.

Fine-tunes a one-step restoration model (``chopgrad_core.heads.restoration``) for the chosen task
on a folder of videos, then evaluates it on held-out clips against the task's plain baseline.
With no arguments: the sample logs' camera videos (made with ``python -m drivegen.data.sample_data`` if
missing and installed; see ``data.prepare``), a tiny random-initialised Wan VAE and transformer,
a couple of minutes on the CPU. ``train.out`` is checked for write access before anything else
runs; every file there is written atomically (``chopgrad_core.atomic``):

- ``head.safetensors``: the checkpoint (:func:`~chopgrad_core.heads.save_head`), for
  ``python -m chopgrad_core.heads.restore``;
- ``eval.md`` / ``eval.json``: PSNR, SSIM, LPIPS (with ``chopgrad.lpips_weights``) and flicker,
  restored vs baseline; ``comparison.png``: a held-out clip, row by row; ``history.json``: losses;
  ``config.json``: the resolved configuration.

Configs: the dataclasses are the one source of truth. :func:`register_configs` stores them in
Hydra's ConfigStore as structured configs: ``finetune_schema`` (:class:`FinetuneConfig`), the
``task`` group's ``<task>_schema`` (``SRConfig``, ``InpaintConfig``, ``EnhanceConfig``) and the
``data`` group's ``schema`` (``HeadDataConfig``). The YAML presets in :data:`CONFIG_DIR`
(``finetune.yaml``, ``task/*.yaml``, ``data/*.yaml``) list those schemas first in their defaults,
so Hydra rejects an unknown key or a value of the wrong type naming the key, and the dataclasses'
``__post_init__`` checks run when the composed config becomes a :class:`FinetuneConfig`
(:func:`from_hydra`). The presets' values equal the dataclass defaults unless a comment there says
why (``tests/heads/test_head_configs.py``). ``HeadModelConfig`` and ``HeadConfig`` live in
``chopgrad_core.heads.restoration``, ``HeadDataConfig`` in ``chopgrad_core.heads.data``,
``ChopGradConfig`` in ``chopgrad_core.config``.
"""

from __future__ import annotations

import importlib.resources
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from chopgrad_core.atomic import check_writable, write_json, write_text
from chopgrad_core.config import ChopGradConfig
from chopgrad_core.errors import ChopGradError, HeadConfigError, NonFiniteError
from chopgrad_core.heads import HEADS, HeadConfig, HeadModelConfig, OneStepRestorer, make_head, save_head
from chopgrad_core.heads.data import HeadDataConfig, VideoSet
from chopgrad_core.heads.metrics import Scorer, Table, comparison_strip
from chopgrad_core.progress import progress


def config_dir() -> Path:
    """The folder of ``finetune.yaml``: the copy packaged with chopgrad_core (a wheel install ships
    ``configs/finetune`` as ``chopgrad_core/configs``) if there is one, else the source checkout's
    ``configs/finetune``."""
    packaged = importlib.resources.files("chopgrad_core") / "configs"
    if packaged.is_dir() and (packaged / "finetune.yaml").is_file():
        return Path(str(packaged)).resolve()
    return Path(__file__).resolve().parents[2] / "configs" / "finetune"


#: Where Hydra finds ``finetune.yaml`` and its groups (an absolute path; see :func:`config_dir`).
CONFIG_DIR = config_dir()


@dataclass(kw_only=True)
class HeadTrainConfig:
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
        bad = [f"train.{k}={getattr(self, k)} must be {rule}"
               for k, rule, ok in (("steps", ">= 0", self.steps >= 0), ("batch_size", ">= 1", self.batch_size >= 1),
                                   ("lr", "> 0", self.lr > 0), ("grad_clip", "> 0", self.grad_clip > 0)) if not ok]
        if bad:
            raise HeadConfigError("; ".join(bad))
        if self.device not in ("cpu", "cuda", "auto"):
            raise HeadConfigError(f"train.device={self.device!r} must be cpu, cuda or auto")


@dataclass(kw_only=True)
class FinetuneConfig:
    """Everything ``python -m chopgrad_core.heads.finetune`` takes (``configs/finetune/finetune.yaml``)."""

    task: HeadConfig
    """The task head and its degradation and loss recipe (group ``task/``: sr, inpaint, enhance)."""
    data: HeadDataConfig = field(default_factory=HeadDataConfig)
    """Where clips come from (group ``data/``: sample, folder)."""
    model: HeadModelConfig = field(default_factory=HeadModelConfig)
    """The one-step restoration model."""
    chopgrad: ChopGradConfig = field(default_factory=lambda: ChopGradConfig(loss="mse"))
    """The ChopGrad pixel loss (MSE: the heads are scored by PSNR)."""
    train: HeadTrainConfig = field(default_factory=HeadTrainConfig)
    """The optimisation and the output folder."""

    def __post_init__(self) -> None:
        if self.data.degraded_root and self.task.name != "enhance":
            raise HeadConfigError(f"data.degraded_root={self.data.degraded_root!r} gives same-size degraded/clean "
                                  f"pairs, which task={self.task.name} does not take; use task=enhance or set "
                                  "data.degraded_root=null")


def register_configs() -> None:
    """Store the dataclasses in Hydra's ConfigStore (the schemas the YAML presets start from)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="finetune_schema", node=FinetuneConfig)
    for name, (cls, _) in HEADS.items():
        cs.store(group="task", name=f"{name}_schema", node=cls)
    cs.store(group="data", name="schema", node=HeadDataConfig)


register_configs()


def from_hydra(cfg: Any) -> FinetuneConfig:
    """The dataclasses from Hydra's composed (already type-checked) config; runs their checks."""
    from omegaconf import OmegaConf

    # to_object would silently put the dataclass default in place of a ??? (e.g. data=folder's root).
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise HeadConfigError(f"{', '.join(missing)} has no value (??? in the preset); set it on the command line, "
                              f"e.g. {missing[0]}=...")
    out = OmegaConf.to_object(cfg)
    make_head(out.task)  # task.name must match the task group's config class
    return out


def load_config(overrides: Sequence[str] = ()) -> FinetuneConfig:
    """The config ``python -m chopgrad_core.heads.finetune *overrides`` would run with."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="finetune"):
        return from_hydra(compose(config_name="finetune", overrides=list(overrides)))


# ----------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise HeadConfigError("train.device=cuda but no CUDA device is available; set train.device=cpu or auto")
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


def finetune(cfg: FinetuneConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train, save, evaluate. Returns the evaluation means, file paths, loss history, model and head."""
    t0 = time.perf_counter()
    # 0. Fail now, not after training, if the results cannot be written.
    out = check_writable(cfg.train.out, "train.out")
    device = _device(cfg.train.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # random-weight decoders drift into denormals, ~30x slower on CPU
    torch.manual_seed(cfg.train.seed)

    # 1. Data, head, model.
    head = make_head(cfg.task)
    data = VideoSet(cfg.data)
    model = OneStepRestorer(cfg.model, head.extra_channels).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.train.seed)

    # 2. Train.
    history: list[dict[str, float]] = []
    bar = progress(range(cfg.train.steps), desc=f"finetune {head.name}", unit="step", disable=not show_progress)
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
    bar.close()
    train_s = time.perf_counter() - t0

    # 3. Save and evaluate on held-out clips (every file atomic).
    checkpoint = save_head(out / "head.safetensors", model, head, extra={"steps": cfg.train.steps})
    write_json(out / "history.json", history)
    write_json(out / "config.json", asdict(cfg))
    model.eval()
    scorer = Scorer(cfg.chopgrad.lpips_weights)
    table = evaluate(model, head, data, scorer, device, strip=out / "comparison.png")
    note = "" if scorer.lpips is not None else "LPIPS skipped: set chopgrad.lpips_weights to a local weights file."
    rendered = table.render(note)
    write_text(out / "eval.md", rendered)
    write_json(out / "eval.json", table.as_dict())

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
    from omegaconf import DictConfig

    if not (CONFIG_DIR / "finetune.yaml").is_file():
        raise HeadConfigError(f"no finetune.yaml in {str(CONFIG_DIR)!r}: the configs are neither packaged "
                              "(chopgrad_core/configs) nor in a source checkout (configs/finetune); reinstall")

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="finetune")
    def main(cfg: DictConfig) -> None:
        try:
            finetune(from_hydra(cfg))
        except ChopGradError as e:  # bad input: the message names the key and the fix; no traceback
            raise SystemExit(f"error: {e}") from None

    main()


if __name__ == "__main__":
    _main()
