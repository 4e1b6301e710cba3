"""Shared by the multi-process training tests (test_parallel*.py): one sample store, made once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def parallel_store(one_scene_store):
    """Sample logs and a 32x48 clip store (6 nuScenes cameras, 5-frame clips; 8 train clips, its val
    logs are another rig's), made once per session by the trainer's ensure_store: tests/conftest.py's
    ``one_scene_store``, shared with tests/reliability."""
    return one_scene_store
