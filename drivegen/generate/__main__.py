"""``python -m drivegen.generate [key=value ...]``: scenarios -> videos and labels (configs/generate.yaml).

With no arguments (after ``make train``): the edited sample scenario ``sample_edit.yaml`` (shipped in
drivegen/generate/scenarios/) with the newest checkpoint under outputs/train, on the CPU, into
outputs/generate/sample_edit/. Several scenarios: ``scenarios=[a.yaml,b.yaml]`` (Ray actors;
``ray.address=...`` for a cluster).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from drivegen.config import CONFIG_DIR, register_schema, to_dataclass
from drivegen.errors import DrivegenError
from drivegen.generate.batch import run
from drivegen.generate.config import GenerateConfig

register_schema("generate_schema", GenerateConfig)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        report = run(to_dataclass(GenerateConfig, cfg))
    except DrivegenError as exc:  # a wrong setting: the message names the key, no traceback needed
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if report["totals"]["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
