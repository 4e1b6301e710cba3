"""Run by tests/train/test_parallel.py under ``torchrun --nproc_per_node=2`` (gloo): one data-parallel
and one context-parallel training run of the real Trainer; rank 0 saves their per-step losses and
the first step's gradients (gathered from the FSDP shards) for the test to compare with one process.

Usage: python -m torch.distributed.run --nproc_per_node=2 parallel_worker.py STORE LOGS OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from drivegen.train import DataConfig, TrainConfig, Trainer, TrainerConfig


class GradRecordingTrainer(Trainer):
    """The Trainer, keeping the first step's (clipped) gradients as full tensors."""

    grads: dict[str, torch.Tensor] | None = None

    def train_step(self, batches, step):
        record = super().train_step(batches, step)
        if self.grads is None:
            self.grads = {}
            for name, p in self.modules.named_parameters():
                if p.grad is not None:
                    g = p.grad
                    self.grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
        return record


def config(store: str, logs: str, out: Path, **trainer) -> TrainConfig:
    return TrainConfig(data=DataConfig(store=store, logs=logs, image_size=[32, 48], batch_size=trainer.pop("batch_size")),
                       trainer=TrainerConfig(lr=3e-3, sample_steps=0, tensorboard=False, out=str(out), **trainer))


def main(store: str, logs: str, out: str) -> None:
    out = Path(out)
    results = {}
    # Data parallel: global batch 2, one clip per process; checkpointed at step 2 (sharded).
    dp = GradRecordingTrainer(config(store, logs, out / "dp", batch_size=2, steps=3, save_every=2))
    dp.train()
    results["dp"] = {"losses": [r["total"] for r in dp.history], "grads": dp.grads}
    # Context parallel: one clip split over both processes (tokens and cameras).
    cp = GradRecordingTrainer(config(store, logs, out / "cp", batch_size=1, steps=2, context_parallel=2))
    cp.train()
    results["cp"] = {"losses": [r["total"] for r in cp.history], "grads": cp.grads}
    if dist.get_rank() == 0:
        torch.save(results, out / "results.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
