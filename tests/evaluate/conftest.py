"""Shared fixtures, made once per session: the sample logs, a 32x48 clip store split as drivegen.train
splits it by default (data.val_logs: a nuScenes scene and the Waymo segment held out; drivegen.data.preprocess
with split.val_logs, on Ray), a checkpoint trained for one step on the train split (drivegen.train), and a
small layout probe (drivegen.evaluate.probe) beside the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from evaluate_shared import IMAGE_SIZE, PROBE, val_logs


@dataclass(frozen=True)
class World:
    root: Path
    store: Path
    checkpoint: Path
    probe: Path
    probe_info: dict
    train_logs: frozenset
    val_logs: frozenset


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_behind():
    """The embedded Ray that preprocessing starts ends with each test module."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    from drivegen.data import preprocess
    from drivegen.data.sample_data import generate_sample_logs
    from drivegen.evaluate.config import EvaluateConfig
    from drivegen.evaluate.probe import train_probe
    from drivegen.model.probe import default_probe_path
    from drivegen.train import DataConfig, TrainConfig, Trainer, TrainerConfig

    torch.set_flush_denormal(True)  # random-weight decoders produce denormals
    root = tmp_path_factory.mktemp("evaluate")
    generate_sample_logs(root / "logs")
    from drivegen.data.ingest import discover_logs

    held_out = val_logs()
    names = {ref.name for ref in discover_logs(root / "logs")}
    assert set(held_out) <= names and names - set(held_out), (held_out, names)
    cfg = preprocess.load_config([f"input_root={root / 'logs'}", f"out={root / 'clips.zarr'}",
                                  f"conditions.image_size=[{IMAGE_SIZE[0]},{IMAGE_SIZE[1]}]", "conditions.bev=false",
                                  "clip.length=5", "clip.stride=5", f"split.val_logs=[{','.join(held_out)}]",
                                  "ray.num_workers=2", "progress=false"])
    preprocess.run(cfg)
    import ray

    ray.shutdown()
    data = DataConfig(logs=str(root / "logs"), store=str(root / "clips.zarr"), image_size=IMAGE_SIZE)
    Trainer(TrainConfig(data=data, trainer=TrainerConfig(steps=1, sample_steps=0, tensorboard=False,
                                                          out=str(root / "train")))).train()
    probe_cfg = EvaluateConfig(store=str(root / "clips.zarr"), progress=False, probe=PROBE())
    _, info = train_probe(probe_cfg, root / "clips.zarr", show_progress=False)
    return World(root=root, store=root / "clips.zarr", checkpoint=root / "train",
                 probe=default_probe_path(root / "clips.zarr"), probe_info=info,
                 train_logs=frozenset(names - set(held_out)), val_logs=frozenset(held_out))
