"""Sample logs for the ingest tests: generated once per session into a temporary folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sample(one_scene_sample):
    """The SampleLogs (files and truth) of generate_sample_logs(seed=0, nuscenes_scenes=1): tests/conftest.py's
    ``one_scene_sample``, shared with other folders (read-only: tests that damage a log copy it)."""
    return one_scene_sample
