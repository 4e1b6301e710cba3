"""Shared fixtures: the logs every preprocessing test reads (generated once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import preprocess_logs  # noqa: E402


@pytest.fixture(scope="session")
def logs(tmp_path_factory, one_scene_sample):
    """{"good": [refs], "corrupt": ref, "stripped": ref, "opener": callable or None}: the sample
    logs of drivegen.data.sample_data (tests/conftest.py's ``one_scene_sample``, shared with other
    folders, read-only) and their corrupt and image-less variants."""
    root = tmp_path_factory.mktemp("logs")
    return preprocess_logs.sample_logs(root, good=one_scene_sample.root)
