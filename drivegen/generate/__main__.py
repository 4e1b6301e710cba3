"""``python -m drivegen.generate [key=value ...]``: scenarios -> videos and labels (configs/generate.yaml).

With no arguments (after ``make train``): the edited sample scenario ``sample_edit.yaml`` (shipped in
drivegen/generate/scenarios/) with the newest checkpoint under outputs/train, on the CPU, into
outputs/generate/sample_edit/. Several scenarios: ``scenarios=[a.yaml,b.yaml]`` (Ray actors;
``ray.address=...`` for a cluster).
"""

from __future__ import annotations

from drivegen.config import cli
from drivegen.generate.batch import run
from drivegen.generate.config import GenerateConfig

# exit 1 when a scenario failed (the others are generated and reported)
main = cli("generate", GenerateConfig, lambda config: 1 if run(config)["totals"]["failed"] else 0)

if __name__ == "__main__":
    main()
