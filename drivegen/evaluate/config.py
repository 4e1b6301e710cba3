"""Configuration of ``python -m drivegen.evaluate`` and ``python -m drivegen.evaluate.probe``;
``configs/evaluate.yaml`` mirrors it 1:1."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from drivegen.errors import EvaluateConfigError
from drivegen.workpool import RayConfig

__all__ = ["EvaluateConfig", "ProbeConfig", "SamplerConfig"]


def _check(key: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise EvaluateConfigError(f"{key}={value!r}: expected {allowed}")


@dataclass(kw_only=True)
class SamplerConfig:
    """How each val clip is generated (the fields of ``drivegen.model.sampler.sample_latents``;
    the generate stage has the same keys, a stage cannot import another's config)."""

    steps: int = 20
    """Euler steps of the flow-matching scheduler."""
    shift: float = 3.0
    """Wan's sigma shift."""
    guidance: float = 1.0
    """Guidance on the controls (1: off); see drivegen.generate's sampler.guidance."""
    seed: int = 0
    """Base noise seed; each clip's seed is this plus a stable hash of the clip's name, so a clip's
    numbers do not depend on which actor runs it or on which other clips are evaluated."""

    def __post_init__(self) -> None:
        _check("sampler.steps", self.steps, self.steps >= 1, "an integer >= 1")
        _check("sampler.guidance", self.guidance, self.guidance > 0, "a value > 0 (1 disables guidance)")


@dataclass(kw_only=True)
class ProbeConfig:
    """The layout probe (drivegen.model.probe): a segmentation network trained on the real frames
    of the store's train split."""

    path: Optional[str] = None
    """The probe file; null: beside the store (<store>.probe.safetensors), where generate finds it too."""
    train: bool = True
    """Train the probe when the file is missing (false: a missing probe is an error)."""
    steps: int = 300
    """Optimizer steps of probe training."""
    batch_size: int = 16
    """Frames per step."""
    lr: float = 3e-3
    """Adam learning rate (cosine decay to 0)."""
    width: int = 24
    """Channels of the probe's first stage (the network is ~0.4 M parameters at 24)."""
    seed: int = 0
    """Seeds the probe's initialisation and frame order."""
    min_box_pixels: int = 8
    """Box recall counts a box as visible when its footprint has at least this many pixels."""
    augment: float = 0.5
    """Share of training batches photometrically degraded (``drivegen.evaluate.probe.degrade``:
    Gaussian blur, sensor noise, brightness and contrast; labels unchanged), as perception models
    are trained. Without it the probe reads the training frames' sharpness and noise as much as
    their layout: on the sample world a 3x3 blur of the real val frames cost it 0.76 -> 0.63 mIoU
    (lane dividers 0.80 -> 0.01), so it scored softness, not where things are. 0: off."""

    def __post_init__(self) -> None:
        _check("probe.augment", self.augment, 0 <= self.augment <= 1, "a share in [0, 1]")
        for key in ("steps", "batch_size", "width", "min_box_pixels"):
            value = getattr(self, key)
            _check(f"probe.{key}", value, isinstance(value, int) and value >= 1, "an integer >= 1")
        _check("probe.lr", self.lr, self.lr > 0, "a learning rate > 0")
        _check("probe.width", self.width, self.width % 8 == 0, "a multiple of 8 (GroupNorm groups)")


@dataclass(kw_only=True)
class EvaluateConfig:
    checkpoint: str = "outputs/train"
    """A training run folder (its newest checkpoint) or one checkpoint-<step>/ folder."""
    store: Optional[str] = None
    """The clip store; null: the one the checkpoint was trained on (its config's data.store)."""
    split: str = "val"
    """The store's split to evaluate on: val (held-out logs) or train (to compare)."""
    datasets: Optional[list[str]] = None
    """Source datasets of the clips to evaluate; null: the checkpoint's data.datasets."""
    max_clips: Optional[int] = None
    """Evaluate only the first N clips of the split (sorted by name); null: all."""
    out: str = "outputs/evaluate"
    """Output root; the run's files go to out/<run>/."""
    run: Optional[str] = None
    """Name of the run folder; null: <training run folder>-<checkpoint folder>, e.g. train-checkpoint-00000150."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    ema: bool = True
    """Use the checkpoint's EMA weights when it has them."""
    mode: str = "auto"
    """local (one after another in this process), ray (Ray actors), or auto (ray for more than one clip to do)."""
    progress: bool = True
    """Progress bar over clips (the summary table is printed either way)."""
    mosaic_frame: int = 0
    """Frame of each clip drawn in its mosaic PNG."""
    fid_weights: Optional[str] = None
    """TorchScript Inception of StyleGAN2-ADA / clean-fid (inception-2015-12-05.pt), a local file: FID per
    frame. null: FID is reported as not computed. Nothing is downloaded."""
    fvd_weights: Optional[str] = None
    """TorchScript I3D of StyleGAN-V (i3d_torchscript.pt), a local file: FVD per clip and camera. null: not computed."""
    lpips_weights: Optional[str] = None
    """LPIPS weights (python -m chopgrad_core.lpips convert); null: LPIPS is not computed."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        _check("split", self.split, self.split in ("val", "train"), "val or train")
        _check("mode", self.mode, self.mode in ("local", "ray", "auto"), "local, ray or auto")
        _check("device", self.device, self.device in ("auto", "cpu") or self.device.startswith("cuda"),
               "auto, cpu, cuda or cuda:N")
        if self.max_clips is not None:
            _check("max_clips", self.max_clips, self.max_clips >= 1, "an integer >= 1, or null for all")
        _check("mosaic_frame", self.mosaic_frame, self.mosaic_frame >= 0, "a frame index >= 0")
        if self.run is not None:
            _check("run", self.run, bool(self.run) and "/" not in self.run and self.run not in (".", ".."),
                   "a folder name (no '/'), or null")

    def torch_device(self) -> str:
        """``device`` with auto resolved (cuda when this process sees a GPU)."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def output_settings(self) -> dict:
        """The settings a finished clip's results depend on (with the checkpoint, the probe and the clip)."""
        d = asdict(self)
        return {k: d[k] for k in ("ema", "sampler", "mosaic_frame", "fid_weights", "fvd_weights", "lpips_weights")} | {
            "min_box_pixels": self.probe.min_box_pixels}
