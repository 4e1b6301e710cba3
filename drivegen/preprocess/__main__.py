"""``python -m drivegen.preprocess``: see ``drivegen.preprocess``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from drivegen.config import CONFIG_DIR, register_schema, to_dataclass
from drivegen.data.preprocess import PreprocessConfig, run

register_schema("preprocess_schema", PreprocessConfig)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="preprocess")
def main(cfg: DictConfig) -> None:
    config = to_dataclass(PreprocessConfig, cfg)
    report = run(config)
    if config.verify:
        sys.exit(1 if report["broken"] else 0)
    if report["totals"]["logs"] and report["totals"]["logs_failed"] == report["totals"]["logs"]:
        sys.exit(1)  # nothing could be read: almost certainly a wrong input_root


if __name__ == "__main__":
    main()
