"""Constants the evaluation tests share (a module of its own name: each test folder has a conftest.py)."""

from __future__ import annotations

IMAGE_SIZE = [32, 48]
WAYMO_LOG = "segment-drivegen-sample-0001_with_camera_labels"  # held out by the default split: evaluated here


def val_logs() -> list[str]:
    """The project's default held-out logs (drivegen.train's data.val_logs), whatever the sample world holds."""
    from drivegen.train import DataConfig

    return list(DataConfig().val_logs)


def PROBE():
    """The small probe the tests train (at its default place beside the store, where generation finds it):
    enough steps to read the sample world's colours, few enough for CI."""
    from drivegen.evaluate.config import ProbeConfig

    return ProbeConfig(steps=60, batch_size=8, width=8, lr=1e-2, min_box_pixels=4)
