"""``python -m drivegen.evaluate [key=value ...]``: score a checkpoint on the store's val split (configs/evaluate.yaml).

With no arguments (after ``make train``): the newest checkpoint under outputs/train on the val split
of the store it was trained on, into outputs/evaluate/<run>/ (metrics.json, report.md, charts,
mosaics). The layout probe is trained first when missing (``python -m drivegen.evaluate.probe``).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from drivegen.config import CONFIG_DIR, register_schema, to_dataclass
from drivegen.errors import DrivegenError
from drivegen.evaluate.config import EvaluateConfig
from drivegen.evaluate.run import run

register_schema("evaluate_schema", EvaluateConfig)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        metrics = run(to_dataclass(EvaluateConfig, cfg))
    except DrivegenError as exc:  # a wrong setting: the message names the key, no traceback needed
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if metrics["totals"]["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
