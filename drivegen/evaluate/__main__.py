"""``python -m drivegen.evaluate [key=value ...]``: score a checkpoint on the store's val split (configs/evaluate.yaml).

With no arguments (after ``make train``): the newest checkpoint under outputs/train on the val split
of the store it was trained on, into outputs/evaluate/<run>/ (metrics.json, report.md, charts,
mosaics). The layout probe is trained first when missing (``python -m drivegen.evaluate.probe``).
"""

from __future__ import annotations

from drivegen.config import cli
from drivegen.evaluate.config import EvaluateConfig
from drivegen.evaluate.run import run

# exit 1 when a clip failed (the others are evaluated and reported)
main = cli("evaluate", EvaluateConfig, lambda config: 1 if run(config)["totals"]["failed"] else 0)

if __name__ == "__main__":
    main()
