"""Several preprocessing runs into one store (issue 17, item 1).

Each clip write owns its partial folder through a flock (``drivegen.data.store``), so a run's
cleanup removes only dead writers' leftovers. Checked two ways: with a writer paused mid-clip in
another process while a run starts and ends around it (deterministic), and with two real runs
(the nuScenes root and the Waymo root, as in the issue) started together into one store.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from drivegen.data import store
from drivegen.data.clips import clip_starts
from drivegen.data.dataset import ClipDataset
from drivegen.data.preprocess import load_config, run

SETTINGS = {"clip": {"length": 4}, "conditions": {}, "cameras": None}

# A writer in another process that stops after its first array, until told to go on: a clip
# in progress. Its arrays are real; only their delivery is slow.
_WRITER = r"""
import sys
import numpy as np
from drivegen.data import store

class Paused(dict):
    def items(self):
        pairs = iter(list(dict.items(self)))
        yield next(pairs)
        print("writing", flush=True)
        sys.stdin.readline()
        yield from pairs

arrays = Paused(timestamp_us=np.arange(4, dtype=np.int64), frame_index=np.arange(4, dtype=np.int64) + 7,
                layout=np.arange(4 * 2 * 3 * 8 * 8, dtype=np.int64).reshape(4, 2, 3, 8, 8).astype(np.uint8))
store.write_clip(sys.argv[1], sys.argv[2], arrays, {"log": "x"}, {"cname": "zstd", "level": 1})
print("done", flush=True)
"""


def _start_writer(out: Path, clip: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), clip], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


class TestPartialFolders:
    """A run starting or ending (cleanup, repair, consolidation) while another process writes a
    clip leaves that clip alone, and it lands complete; a dead writer's folder is removed."""

    def test_live_writers_clip_survives_another_runs_cleanup(self, tmp_path):
        out = tmp_path / "clips.zarr"
        store.open_store(out, SETTINGS)
        live, dead = _start_writer(out, "live__000000"), _start_writer(out, "dead__000000")
        try:
            dead.send_signal(signal.SIGKILL)
            dead.wait()
            in_progress = sorted(p.name for p in (out / store.PARTIAL).iterdir())
            assert len(in_progress) == 2
            # What another run does at its start and end:
            removed = store.remove_stale_partial(out)
            store.repair(out)
            store.consolidate(out)
            assert [n.split(".")[0] for n in removed] == ["dead__000000"]
            assert [p.name for p in (out / store.PARTIAL).iterdir()] == [n for n in in_progress if n.startswith("live")]
            live.stdin.write("go\n")
            live.stdin.flush()
            assert live.stdout.readline().strip() == "done"
            assert live.wait() == 0
        finally:
            live.kill()
        store.check_clip(out, "live__000000", full=True)
        assert store.completed_clips(out) == {"live__000000"}
        group = zarr.open_group(out / "clips" / "live__000000", mode="r")
        np.testing.assert_array_equal(group["frame_index"][...], np.arange(4) + 7)
        assert group["layout"][...].any()  # real data, not the fill value
        assert not any((out / store.PARTIAL).iterdir())
        assert [p.name for p in (out / store.LOCKS).iterdir()] == ["store.lock"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class TestTwoRuns:
    """Two preprocessing runs started together into one store (one per dataset root) both succeed
    and leave every clip of both complete, verified and readable."""

    def test_two_runs_started_together_leave_every_clip_complete(self, ray_local, sample_logs, tmp_path):
        from drivegen.data.ingest import discover_logs

        out = tmp_path / "clips.zarr"
        config = load_config([f"out={out}", "clip.length=2", "clip.stride=12", "conditions.image_size=[32,48]",
                              "conditions.bev=false", "progress=false", "ray.num_workers=1"])
        refs = discover_logs(sample_logs)
        assert sorted(r.kind for r in refs) == ["nuscenes", "waymo"]
        start = threading.Barrier(len(refs))
        reports, errors = {}, []

        def one(ref):
            try:
                start.wait()
                reports[ref.kind] = run(config, refs=[ref])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(ref,)) for ref in refs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        expected = set()
        for ref in refs:
            [row] = reports[ref.kind]["logs"]
            assert row["status"] == "ok" and row["clips_written"] == row["clips_total"] > 0, row
            expected |= {store.clip_id(ref.name, s) for s in clip_starts(row["frames"], 2, 12)}
        assert store.completed_clips(out) == expected
        assert store.consolidated_clips(out) == expected  # the later consolidation saw both runs' clips
        assert store.verify_store(out)["broken"] == {}
        assert not any((out / store.PARTIAL).iterdir()) if (out / store.PARTIAL).exists() else True
        for dataset in ("nuscenes", "waymo"):
            ds = ClipDataset(out, datasets=[dataset])
            for i in range(len(ds)):
                assert ds[i]["images"].abs().sum() > 0
