"""Shared fixtures of the reliability tests (issue 17): the sample logs, one small training clip
store and one tiny trained checkpoint, each made once per session with the real pipeline.

The store and the run folder are read-only to the tests: a test that damages or kills something
works on its own copy (``copy_store``, ``copy_run``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_logs(one_scene_sample) -> Path:
    """The sample logs with one nuScenes scene (tests/conftest.py: shared with other folders)."""
    return Path(one_scene_sample.root)


@pytest.fixture(scope="session")
def train_data(one_scene_store):
    """DataConfig of a 32x48 store of 5-frame clips of ``sample_logs``, written by the trainer's own
    ensure_store (preprocessing on an embedded Ray, which is shut down again: later forks must not
    inherit it). tests/conftest.py's ``one_scene_store``, shared with tests/train."""
    return one_scene_store


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory) -> Path:
    """Where ``trained`` saved its checkpoint (tests move the trainer's ``out``; this stays)."""
    return tmp_path_factory.mktemp("run") / "train"


@pytest.fixture(scope="session")
def trained(train_data, run_folder):
    """A Trainer that ran one step and saved ``run_folder/checkpoint-00000001`` (TensorBoard off)."""
    from drivegen.train import TrainConfig, Trainer, TrainerConfig

    trainer = Trainer(TrainConfig(data=train_data, trainer=TrainerConfig(steps=1, out=str(run_folder),
                                                                         sample_steps=0, tensorboard=False)))
    trainer.train()
    return trainer


@pytest.fixture
def copy_store(train_data, tmp_path):
    """A private copy of the session's clip store."""
    out = tmp_path / "clips.zarr"
    shutil.copytree(train_data.store, out)
    return out


@pytest.fixture
def copy_run(trained, run_folder, tmp_path):
    """A private copy of the trained run folder."""
    out = tmp_path / "train"
    shutil.copytree(run_folder, out)
    return out


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder no one can create, root included (chmod does not stop root, and the tests run as
    root): a path under a regular file, where mkdir fails with NotADirectoryError."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder\n")
    return blocker / "sub"
