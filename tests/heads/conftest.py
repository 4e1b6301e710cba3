"""Shared fixtures: the sample camera videos, made once per session through ``data.prepare``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _cpu_settings():
    # Random-weight decoders drift into denormals (~30x slower); the tiny models' tensors are too
    # small for intra-op threads to pay, and on a shared 2-core machine they oversubscribe it.
    torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory) -> dict:
    """HeadDataConfig keys for the sample logs' camera sweeps, written by the finetune data path itself
    (``data.prepare`` runs ``python -m drivegen.data.sample_data`` when the root is missing)."""
    from chopgrad_core.heads.data import HeadDataConfig, ensure_root

    out = tmp_path_factory.mktemp("sample") / "sample"
    keys = dict(root=str(out / "nuscenes" / "sweeps"), prepare=["drivegen.data.sample_data", "--out", str(out)])
    ensure_root(HeadDataConfig(**keys))
    return keys
