"""``python -m drivegen.train [key=value ...]``: the main job (configs/train.yaml).

With no arguments: make the sample logs and the clip store if missing, train the tiny model on
the CPU, and write a checkpoint and a loss curve under outputs/train.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from drivegen.train.config import TrainConfig
from drivegen.train.trainer import Trainer


def to_config(cfg: DictConfig) -> TrainConfig:
    return TrainConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    Trainer(to_config(cfg)).train()


if __name__ == "__main__":
    main()
