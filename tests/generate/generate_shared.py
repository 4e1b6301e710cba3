"""Constants and helpers the generation tests share. A module of its own name, not conftest:
test folders each have a conftest.py, and ``from conftest import`` resolves to whichever one
pytest imported last."""

from __future__ import annotations

from pathlib import Path

CAMERAS = ["CAM_FRONT", "CAM_BACK"]
IMAGE_SIZE = [32, 48]


def write_scenario(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + body)
    return path
