"""Configuration of ``python -m drivegen.train``; ``configs/train.yaml`` and its groups mirror it 1:1."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from chopgrad_core.config import ChopGradConfig
from drivegen.errors import TrainConfigError
from drivegen.model.controlled_wan import ModelConfig
from drivegen.model.objective import ObjectiveConfig
from drivegen.workpool import RayConfig

__all__ = ["DataConfig", "TrainConfig", "TrainerConfig"]


def _check(key: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise TrainConfigError(f"{key}={value!r}: expected {allowed}")


@dataclass(kw_only=True)
class DataConfig:
    logs: str = "datasets/sample"
    """Logs to preprocess when the store is missing (generated with drivegen.data.sample_data if absent)."""
    store: str = "datasets/train_clips.zarr"
    """The clip store (python -m drivegen.preprocess); made from ``logs`` when missing."""
    image_size: list[int] = field(default_factory=lambda: [64, 112])
    """(height, width) the store is written at and trained at; multiples of 16."""
    clip_length: int = 5
    """Frames per training clip: 1 + 4k (the Wan VAE's temporal compression)."""
    datasets: Optional[list[str]] = field(default_factory=lambda: ["nuscenes"])
    """Source datasets to train on (one camera rig per run)."""
    # The sample world's held-out logs (drivegen.data.sample_data.SAMPLE_VAL_LOGS; tests/test_configs.py
    # keeps the two equal), written out so that this config does not import the sample world's writers.
    val_logs: Optional[list[str]] = field(default_factory=lambda: ["scene-drivegen-0003",
                                                                   "segment-drivegen-sample-0001_with_camera_labels"])
    """When the trainer preprocesses ``logs`` itself: the logs held out as the val split
    (``split.val_logs`` of preprocessing); null: preprocessing's ``split.val_fraction`` decides."""
    split: Optional[str] = "train"
    """The store's split to train on (preprocessing records one per log): 'train'; null reads every
    clip, held-out ones included (only for stores written before splits existed)."""
    batch_size: int = 1
    """Clips per step."""
    num_workers: int = 0
    """DataLoader worker processes (spawn context)."""
    cache_mb: int = 1024
    """Memory (MB, host) for clips' prepared model inputs: the frozen encoder's latents of the
    frames and control video, the pooled layout, the box tokens' inputs and the frames. A cached
    clip is neither read from the store nor encoded again (exact: the encoder is frozen and uses
    its posterior's mode). Clips past the budget are prepared every time; 0: no cache. Not used
    with camera parallelism (each rank encodes only its cameras) or DataLoader workers
    (``num_workers`` > 0: they read ahead instead)."""

    def __post_init__(self) -> None:
        _check("data.batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        _check("data.cache_mb", self.cache_mb, self.cache_mb >= 0, "an integer >= 0 (MB; 0: no cache)")
        _check("data.split", self.split, self.split in ("train", None), "train, or null for every clip")
        _check("data.num_workers", self.num_workers, self.num_workers >= 0, "an integer >= 0")
        if (self.clip_length - 1) % 4 != 0 or self.clip_length < 1:
            raise TrainConfigError(f"data.clip_length={self.clip_length} must be 1 + 4k (e.g. 5, 9, 17)")
        if len(self.image_size) != 2 or any(s % 16 for s in self.image_size):
            raise TrainConfigError(f"data.image_size={list(self.image_size)} must be [H, W], multiples of 16")


@dataclass(kw_only=True)
class TrainerConfig:
    steps: int = 150
    """Optimizer steps."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    seed: int = 0
    """Seeds model initialisation, noise and data order."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    out: str = "outputs/train"
    """Checkpoint, loss curve and logs go here."""
    grad_accum: int = 1
    """Batches whose gradients add up before each optimizer step."""
    ema: Optional[float] = None
    """EMA decay of the model weights (e.g. 0.999), saved beside the checkpoint; null: off."""
    mixed_precision: str = "bf16"
    """bf16 autocast on CUDA (ignored on the CPU) or no."""
    gradient_checkpointing: bool = False
    """Checkpoint the transformer's blocks (diffusers' own gradient checkpointing)."""
    sample_steps: int = 20
    """Sampler steps for the videos written after training (0: no videos)."""
    save_every: int = 0
    """Steps between checkpoints (0: only at the end), each written atomically as out/checkpoint-<step>/."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept under out (older ones are removed after each save); 0 keeps all."""
    lora: Optional[int] = None
    """LoRA rank for the transformer's attention and feed-forward layers (peft, through diffusers'
    adapter support); the condition embeddings and the control patch embedding stay fully trained.
    null: full fine-tuning."""
    tensorboard: bool = True
    """Write TensorBoard scalars (losses, grad norm, learning rate, speed) under out/tensorboard."""
    resume: Optional[str] = None
    """A checkpoint folder (or run folder) to continue from; ``auto``: the newest complete checkpoint
    under out if there is one, else a fresh start; null: a fresh start."""
    overwrite: bool = False
    """Allow a fresh run (resume=null) into an out that already holds checkpoints."""
    lr_warmup: int = 0
    """Steps of linear learning-rate warmup from 0 to ``lr``."""
    lr_schedule: str = "constant"
    """After warmup: constant, or cosine (decay to ``lr * lr_min_ratio`` at ``steps``)."""
    lr_min_ratio: float = 0.0
    """Final learning rate of the cosine schedule as a share of ``lr``."""
    val_every: int = 0
    """Steps between validation losses on the store's val split (TensorBoard val/*); 0: off."""
    val_batches: int = 4
    """Val-split batches per validation (fixed noise, so the curve compares like with like)."""
    context_parallel: int = 1
    """Processes that share one clip: its tokens (Ulysses attention) and its cameras' pixel loss
    (camera-parallel ChopGrad); the world size / context_parallel processes are data parallel.
    Divides the world size, the head count and the camera count (drivegen/train/parallel.py)."""
    num_workers: int = 1
    """Ray Train workers (launcher=ray); torchrun sets the world size with --nproc_per_node."""
    use_gpu: bool = False
    """Ray Train workers get one GPU each (launcher=ray)."""

    def __post_init__(self) -> None:
        _check("trainer.steps", self.steps, self.steps >= 1, "an integer >= 1")
        _check("trainer.lr", self.lr, self.lr > 0, "a learning rate > 0")
        _check("trainer.weight_decay", self.weight_decay, self.weight_decay >= 0, "a value >= 0")
        _check("trainer.grad_clip", self.grad_clip, self.grad_clip > 0, "a gradient-norm bound > 0")
        _check("trainer.grad_accum", self.grad_accum, self.grad_accum >= 1, "an integer >= 1")
        _check("trainer.sample_steps", self.sample_steps, self.sample_steps >= 0, "an integer >= 0 (0: no videos)")
        _check("trainer.save_every", self.save_every, self.save_every >= 0, "an integer >= 0 (0: only at the end)")
        _check("trainer.keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints >= 0,
               "an integer >= 0 (0: keep all)")
        _check("trainer.device", self.device, self.device in ("auto", "cpu") or self.device.startswith("cuda"),
               "auto, cpu, cuda or cuda:N")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise TrainConfigError(f"trainer.ema={self.ema} must be in (0, 1) or null")
        if self.lora is not None and self.lora < 1:
            raise TrainConfigError(f"trainer.lora={self.lora}: a LoRA rank >= 1, or null for full fine-tuning")
        _check("trainer.lr_warmup", self.lr_warmup, self.lr_warmup >= 0, "an integer >= 0")
        _check("trainer.lr_schedule", self.lr_schedule, self.lr_schedule in ("constant", "cosine"), "constant or cosine")
        _check("trainer.lr_min_ratio", self.lr_min_ratio, 0.0 <= self.lr_min_ratio <= 1.0, "a share in [0, 1]")
        _check("trainer.val_every", self.val_every, self.val_every >= 0, "an integer >= 0 (0: off)")
        _check("trainer.val_batches", self.val_batches, self.val_batches >= 1, "an integer >= 1")
        _check("trainer.context_parallel", self.context_parallel, self.context_parallel >= 1, "an integer >= 1")
        _check("trainer.num_workers", self.num_workers, self.num_workers >= 1, "an integer >= 1")
        if self.mixed_precision not in ("bf16", "no"):
            raise TrainConfigError(f"trainer.mixed_precision={self.mixed_precision!r}: choose bf16 or no")


@dataclass(kw_only=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    chopgrad: ChopGradConfig = field(default_factory=ChopGradConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    launcher: str = "local"
    """local: this process (one, or each of torchrun's); ray: Ray Train's TorchTrainer starts
    ``trainer.num_workers`` processes that run the same loop (drivegen/train/launch.py)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where Ray runs (launcher=ray): ray.address joins a cluster, none starts an embedded one."""

    def __post_init__(self) -> None:
        _check("launcher", self.launcher, self.launcher in ("local", "ray"), "local or ray")
