"""``python -m drivegen.train [key=value ...]``: the main job (configs/train.yaml).

With no arguments: make the sample logs and the clip store if missing, train the tiny model on
the CPU, and write a checkpoint and a loss curve under outputs/train.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from chopgrad_core.config import ChopGradConfig
from drivegen.model import ModelConfig
from drivegen.objective import ObjectiveConfig
from drivegen.train.config import DataConfig, TrainConfig, TrainerConfig
from drivegen.train.trainer import Trainer


def to_config(cfg: DictConfig) -> TrainConfig:
    raw = OmegaConf.to_container(cfg, resolve=True)
    return TrainConfig(model=ModelConfig(**raw["model"]), data=DataConfig(**raw["data"]),
                       objective=ObjectiveConfig(**raw["objective"]), chopgrad=ChopGradConfig(**raw["chopgrad"]),
                       trainer=TrainerConfig(**raw["trainer"]))


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    Trainer(to_config(cfg)).train()


if __name__ == "__main__":
    main()
