"""``python -m drivegen.train [key=value ...]``: the main job (configs/train.yaml).

With no arguments: make the sample logs and the clip store if missing, train the tiny model on
the CPU, and write checkpoints and a loss curve under outputs/train.

Several processes run the same loop (drivegen/train/parallel.py):
``torchrun --nproc_per_node=N -m drivegen.train ...`` (each process is one of them), or
``python -m drivegen.train launcher=ray trainer.num_workers=N [ray.address=auto]`` (Ray Train
starts them; drivegen/train/launch.py).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from drivegen.config import CONFIG_DIR, register_schema, to_dataclass
from drivegen.train.config import TrainConfig
from drivegen.train.trainer import Trainer

register_schema("train_schema", TrainConfig)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    config = to_dataclass(TrainConfig, cfg)
    if config.launcher == "ray":
        from drivegen.train.launch import run_ray

        run_ray(config)
        return
    Trainer(config).train()
    import torch.distributed as dist

    if dist.is_initialized():  # torchrun: this process joined the group in Trainer
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
