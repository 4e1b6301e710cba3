"""ClipWorker in-process (no Ray): camera selection, idempotent clip writes, bad logs as results."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from drivegen.data import store
from drivegen.data.preprocess import ClipWorker, load_config


@pytest.fixture
def worker_for(logs, tmp_path):
    def make(*overrides: str) -> tuple[ClipWorker, str]:
        out = tmp_path / f"clips{len(list(tmp_path.iterdir()))}.zarr"  # a store per worker
        config = load_config(
            [f"out={out}", "clip.length=2", "conditions.image_size=[32,56]", "conditions.bev=false", *overrides]
        )
        store.open_store(out, config.store_settings())
        return ClipWorker(str(out), config, logs["opener"]), str(out)

    return make


class TestClipWorker:
    """A worker writes each clip once, keeps the configured cameras in order, and turns every
    failure to read a log into a result with a reason (it never raises for a bad log)."""

    def test_write_clip_twice_writes_once_and_leaves_no_temp(self, worker_for, logs):
        worker, out = worker_for()
        ref = logs["good"][0]
        first, second = worker.write_clip(ref, 0), worker.write_clip(ref, 0)
        assert (first["status"], second["status"]) == ("written", "exists")
        assert store.completed_clips(out) == {store.clip_id(ref.name, 0)}
        assert not any((Path(out) / store.PARTIAL).glob("*"))

    def test_configured_cameras_are_stored_in_order(self, worker_for, logs):
        ref = logs["good"][0]
        cameras = list(worker_for()[0].plan(ref)["cameras"])[::-1][:2]
        worker, out = worker_for(f"cameras=[{','.join(cameras)}]")
        assert worker.write_clip(ref, 0)["status"] == "written"
        group = zarr.open_group(f"{out}/clips/{store.clip_id(ref.name, 0)}", mode="r")
        assert group.attrs["cameras"] == cameras and group["layout"].shape[1] == 2
        assert "bev" not in group

    def test_log_lacking_a_configured_camera_fails_with_its_cameras_listed(self, worker_for, logs):
        ref = logs["good"][0]
        worker, _ = worker_for("cameras=[NO_SUCH_CAMERA]")
        plan = worker.plan(ref)
        assert not plan["ok"] and "NO_SUCH_CAMERA" in plan["reason"] and "cameras" in plan["reason"]

    def test_corrupt_log_is_a_failed_result_not_an_exception(self, worker_for, logs):
        worker, out = worker_for()
        assert not worker.plan(logs["corrupt"])["ok"]
        result = worker.write_clip(logs["corrupt"], 0)
        assert result["status"] == "failed" and result["reason"]
        assert store.completed_clips(out) == set()
