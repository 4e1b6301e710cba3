"""drivegen.preprocess end to end on Ray (local, 2 CPUs, started once for this module).

The store is built once from the sample logs plus a corrupt copy of the Waymo segment and a
Waymo segment stripped of its images; tests then check it, rerun into it, and crash a worker.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import preprocess_logs  # noqa: E402  (also on the workers' PYTHONPATH: see ray_local)

from drivegen.data import store  # noqa: E402
from drivegen.errors import StoreError  # noqa: E402
from drivegen.data.clips import clip_starts  # noqa: E402
from drivegen.data.preprocess import load_config, run  # noqa: E402

T, STRIDE = 2, 12
OVERRIDES = [f"clip.length={T}", f"clip.stride={STRIDE}", "conditions.image_size=[64,112]", "progress=false"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():  # an embedded Ray left by earlier tests lacks this module's PYTHONPATH
        ray.shutdown()
    # Workers must import preprocess_logs (openers and refs are pickled by reference); Ray's
    # processes take the environment at ray.init, so it is restored right after.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), saved]))
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


def _config(out: Path, *extra: str):
    return load_config([f"out={out}", *OVERRIDES, *extra])


@pytest.fixture(scope="module")
def built(ray_local, logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "clips.zarr"
    refs = [*logs["good"], logs["corrupt"], logs["stripped"]]
    report = run(_config(out), refs=refs, opener=logs["opener"])
    return out, report


def _snapshot(path: Path) -> dict[str, float]:
    return {
        str(p.relative_to(path)): p.stat().st_mtime_ns
        for p in sorted(path.rglob("*"))
        if p.name != store.REPORT
    }


class TestStoreContents:
    """Each clip holds exactly the arrays of store.ARRAYS, with the declared shapes and dtypes,
    chunked per frame and camera inside one shard; metadata is consolidated at the root."""

    def test_every_clip_has_declared_arrays_shapes_and_dtypes(self, built):
        out, report = built
        config = _config(out)
        H, W = config.conditions.image_size
        root = zarr.open_group(out, mode="r", use_consolidated=True)
        clips = dict(root["clips"].groups())
        assert clips
        for name, group in clips.items():
            attrs = group.attrs
            sizes = {
                "T": T, "K": len(attrs["cameras"]), "H": H, "W": W, "3": 3, "8": 8, "2": 2, "4": 4,
                "C": len(attrs["layout_channels"]), "S": config.conditions.max_boxes,
                "P": len(attrs["box_param_names"]), "6": 6, "h": -(-H // 8), "w": -(-W // 8),
                "Cb": len(attrs["bev_channels"]), "Hb": 200, "Wb": 200,
            }
            expected = set(store.ARRAYS) - (set() if attrs["has_images"] else {"images"})
            assert set(group.array_keys()) == expected, name
            for key in expected:
                spec, array = store.ARRAYS[key], group[key]
                assert array.shape == tuple(sizes[d] for d in spec.dims.split()), (name, key)
                assert array.dtype == np.dtype(spec.dtype), (name, key)
                if spec.per_image:
                    assert array.shards == array.shape, (name, key)

    def test_clip_ids_match_clip_starts_of_every_readable_log(self, built, logs):
        out, report = built
        rows = {r["log"]: r for r in report["logs"]}
        expected = {
            store.clip_id(r["log"], s)
            for r in rows.values()
            if r["status"] != "failed"
            for s in clip_starts(r["frames"], T, STRIDE)
        }
        assert expected and store.completed_clips(out) == expected
        assert store.consolidated_clips(out) == expected

    def test_segment_without_images_becomes_flagged_conditions_only_clips(self, built, logs):
        out, report = built
        name = logs["stripped"].name
        row = next(r for r in report["logs"] if r["log"] == name)
        assert row["status"] == "conditions_only" and row["clips_written"] > 0
        root = zarr.open_group(out, mode="r", use_consolidated=True)
        for clip, group in root["clips"].groups():
            if group.attrs["log"] == name:
                assert group.attrs["has_images"] is False and group.attrs["conditions_only"] is True
                assert "images" not in group and "layout" in group


class TestReliability:
    """A corrupt log is reported and the others land; a rerun writes nothing; a worker killed
    mid-clip is restarted and its clip retried, so nothing is lost or half-written."""

    def test_corrupt_log_is_reported_and_others_land(self, built, logs):
        out, report = built
        on_disk = json.loads((out / store.REPORT).read_text())
        assert on_disk == json.loads(json.dumps(report))
        [failed] = on_disk["failed"]
        assert failed["log"] == logs["corrupt"].name and failed["reason"]
        for ref in logs["good"]:
            row = next(r for r in on_disk["logs"] if r["log"] == ref.name)
            assert row["status"] == "ok" and row["clips_written"] == row["clips_total"] > 0

    def test_rerun_writes_nothing_new(self, built, logs):
        out, _ = built
        before = _snapshot(out)
        report = run(_config(out), refs=[*logs["good"], logs["corrupt"], logs["stripped"]], opener=logs["opener"])
        assert _snapshot(out) == before
        assert report["totals"]["clips_written"] == 0
        assert report["totals"]["clips_skipped"] == report["totals"]["clips_in_store"]

    def test_other_settings_into_existing_store_are_refused(self, built, logs):
        out, _ = built
        with pytest.raises(StoreError, match="other settings"):
            run(_config(out, "clip.length=3"), refs=logs["good"], opener=logs["opener"])

    def test_killed_worker_loses_nothing(self, built, logs, tmp_path):
        reference, _ = built
        out = tmp_path / "crash.zarr"
        marker = tmp_path / "crash-once"
        marker.touch()
        opener = functools.partial(
            preprocess_logs.crash_once_opener, marker=str(marker), after=3, inner=logs["opener"]
        )
        report = run(_config(out), refs=logs["good"], opener=opener)
        assert not marker.exists(), "the worker never crashed: the test proved nothing"
        assert report["failed"] == []
        expected = {c for c in store.completed_clips(reference) if any(c.startswith(f"{r.name}__") for r in logs["good"])}
        assert store.completed_clips(out) == expected
        assert not any((out / store.PARTIAL).glob("*"))  # the killed writer's partial clip is gone
        a = zarr.open_group(out, mode="r", use_consolidated=True)
        b = zarr.open_group(reference, mode="r", use_consolidated=True)
        for clip in expected:
            for key in ("images", "layout", "box_params", "timestamp_us"):
                np.testing.assert_array_equal(a[f"clips/{clip}/{key}"][...], b[f"clips/{clip}/{key}"][...])
