"""``python -m drivegen.train [key=value ...]``: the main job (configs/train.yaml).

With no arguments: make the sample logs and the clip store if missing, train the tiny model on
the CPU, and write checkpoints and a loss curve under outputs/train.
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
    Trainer(to_dataclass(TrainConfig, cfg)).train()


if __name__ == "__main__":
    main()
