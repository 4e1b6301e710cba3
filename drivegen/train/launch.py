"""``launcher=ray``: Ray Train's ``TorchTrainer`` runs :class:`Trainer` in ``trainer.num_workers``
processes (one GPU each with ``trainer.use_gpu=true``), on an embedded local Ray or on the cluster
at ``ray.address``. Ray Train starts the processes and their process group (gloo on CPUs, NCCL on
GPUs); from there the loop, the mesh and the checkpoints are exactly torchrun's
(drivegen/train/parallel.py), so the two launchers train identically.

The store is made (if missing) by the driver before the workers start, so they never race to
write it. Paths are made absolute first: Ray workers may start in another folder. On a cluster
of several machines, ``data.store`` and ``trainer.out`` must be on storage every node sees (the
sharded checkpoint is written by every worker into ``trainer.out``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from drivegen.train.config import TrainConfig

__all__ = ["run_ray"]


def _worker(loop_config: dict) -> None:
    """One Ray Train worker: the process group is up; build the config and run the same loop."""
    import ray.train.torch

    from drivegen.config import to_dataclass
    from drivegen.train.trainer import Trainer

    config = loop_config["config"]
    config["trainer"]["device"] = str(ray.train.torch.get_device())  # the GPU Ray gave this worker, or cpu
    Trainer(to_dataclass(TrainConfig, config)).train()


def run_ray(cfg: TrainConfig):
    """Make the store if missing, then train with ``trainer.num_workers`` Ray Train workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from drivegen.train.trainer import ensure_store
    from drivegen.workpool import init_ray

    config = asdict(cfg)
    for section, key in (("data", "store"), ("data", "logs"), ("trainer", "out"), ("model", "pretrained"),
                         ("trainer", "resume")):
        value = config[section][key]
        if value and value != "auto":
            config[section][key] = str(Path(value).expanduser().resolve())
    config["launcher"] = "local"  # inside a worker the loop runs in place
    init_ray(cfg.ray)
    ensure_store(cfg)
    out = Path(config["trainer"]["out"])
    trainer = TorchTrainer(
        _worker, train_loop_config={"config": config},
        scaling_config=ScalingConfig(num_workers=cfg.trainer.num_workers, use_gpu=cfg.trainer.use_gpu),
        torch_config=TorchConfig(backend="nccl" if cfg.trainer.use_gpu else "gloo"),
        run_config=RunConfig(name="ray_train", storage_path=str(out / "ray")))
    return trainer.fit()
