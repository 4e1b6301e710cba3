"""Shared by the multi-process training tests (test_parallel*.py): one sample store, made once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def parallel_store(tmp_path_factory):
    """Sample logs and a 32x48 clip store (6 nuScenes cameras, 5-frame clips), made once per session."""
    from drivegen.data.sample_data import generate_sample_logs
    from drivegen.train import DataConfig, TrainConfig
    from drivegen.train.trainer import ensure_store

    root = tmp_path_factory.mktemp("parallel")
    generate_sample_logs(root / "logs", nuscenes_scenes=1)  # 8 train clips; its val logs are another rig's
    data = DataConfig(logs=str(root / "logs"), store=str(root / "clips.zarr"), image_size=[32, 48])
    ensure_store(TrainConfig(data=data))
    return data
