"""Shared fixtures: sample logs, a small 2-camera clip store and a tiny trained checkpoint, made once
per session (the store through drivegen.data.preprocess and Ray, the checkpoint through drivegen.train)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from generate_shared import CAMERAS, IMAGE_SIZE  # noqa: F401  (test modules import these from there)


@dataclass(frozen=True)
class World:
    logs: Path
    store: Path
    checkpoint: Path
    root: Path


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_behind():
    """drivegen's embedded Ray (started by preprocess and batch runs) ends with each test module,
    so later folders that start Ray with their own settings find none running."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def logs(one_scene_sample) -> Path:
    """The sample logs with one nuScenes scene (tests/conftest.py: shared with other folders, read-only)."""
    return Path(one_scene_sample.root)


@pytest.fixture(scope="session")
def world(logs, tmp_path_factory) -> World:
    from drivegen.data import preprocess
    from drivegen.train import DataConfig, TrainConfig, Trainer, TrainerConfig

    torch.set_flush_denormal(True)  # random-weight decoders produce denormals
    root = tmp_path_factory.mktemp("generate")
    cfg = preprocess.load_config([f"input_root={logs}", f"out={root / 'clips.zarr'}",
                                  f"cameras=[{','.join(CAMERAS)}]", f"conditions.image_size=[{IMAGE_SIZE[0]},{IMAGE_SIZE[1]}]",
                                  "conditions.bev=false", "clip.length=5", "clip.stride=5", "ray.num_workers=2",
                                  "progress=false"])
    preprocess.run(cfg)
    data = DataConfig(logs=str(logs), store=str(root / "clips.zarr"), image_size=IMAGE_SIZE)
    Trainer(TrainConfig(data=data, trainer=TrainerConfig(steps=2, sample_steps=0, out=str(root / "train")))).train()
    return World(logs=logs, store=root / "clips.zarr", checkpoint=root / "train", root=root)


@pytest.fixture(scope="session")
def source_scene(logs):
    """The nuScenes sample log as a Scene (the source of every scenario here)."""
    from drivegen.data.ingest import discover_logs, open_log

    ref = next(r for r in discover_logs(logs) if r.kind == "nuscenes")
    return open_log(ref).scene

