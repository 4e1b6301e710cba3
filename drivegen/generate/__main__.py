"""``python -m drivegen.generate [key=value ...]``: scenarios -> videos and labels (configs/generate.yaml).

With no arguments (after ``make train``): the edited sample scenario configs/scenarios/sample_edit.yaml
with the checkpoint in outputs/train/checkpoint, on the CPU, into outputs/generate/sample_edit/.
Several scenarios: ``scenarios=[a.yaml,b.yaml]`` (Ray actors; ``ray.address=...`` for a cluster).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from drivegen.errors import DrivegenError
from drivegen.generate.batch import run
from drivegen.generate.config import to_config


@hydra.main(version_base="1.3", config_path="../../configs", config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        report = run(to_config(cfg))
    except DrivegenError as exc:  # a wrong setting: the message names the key, no traceback needed
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if report["totals"]["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
