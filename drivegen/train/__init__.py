"""Training: ``python -m drivegen.train`` (Hydra, configs/train.yaml)."""

from drivegen.train.config import DataConfig, TrainConfig, TrainerConfig
from drivegen.train.trainer import Trainer

__all__ = ["DataConfig", "TrainConfig", "Trainer", "TrainerConfig"]
