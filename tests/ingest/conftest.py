"""Sample logs for the ingest tests: generated once per session into a temporary folder."""

from __future__ import annotations

import pytest

from drivegen.data.sample_data import generate_sample_logs


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    return generate_sample_logs(tmp_path_factory.mktemp("ingest") / "sample", seed=0, nuscenes_scenes=1)
