"""Session fixtures shared by several test folders: made once, read-only to every test.

A test that damages or kills something works on its own copy (as tests/reliability's ``copy_store``
and tests/ingest's ``nuscenes_copy`` do); a folder that needs other settings makes its own.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def one_scene_sample(tmp_path_factory):
    """The sample world's logs with one nuScenes scene (``nuscenes/``) and the Waymo segment
    (``drivegen.data.sample_data``, seed 0, default image size): its SampleLogs (``.root``, the truth)."""
    from drivegen.data.sample_data import generate_sample_logs

    return generate_sample_logs(tmp_path_factory.mktemp("one_scene") / "logs", seed=0, nuscenes_scenes=1)


@pytest.fixture(scope="session")
def one_scene_store(one_scene_sample, tmp_path_factory):
    """DataConfig of a 32x48 store of 5-frame clips of ``one_scene_sample`` (6 nuScenes cameras; the
    Waymo segment held out by the default data.val_logs), written by the trainer's own ensure_store:
    preprocessing on an embedded Ray, which is shut down again (later forks must not inherit it, and
    later folders start Ray with their own settings)."""
    import ray

    from drivegen.train import DataConfig, TrainConfig
    from drivegen.train.trainer import ensure_store

    data = DataConfig(logs=str(one_scene_sample.root), store=str(tmp_path_factory.mktemp("one_scene_store") / "clips.zarr"),
                      image_size=[32, 48])
    ensure_store(TrainConfig(data=data))
    ray.shutdown()
    return data
