"""A damaged clip store is found and repaired, never read as zeros (issue 17, items 1, 2 and 7).

Before: a deleted ``images`` shard read as frames of constant -1 and training ran on them; a
rerun neither noticed nor repaired it; a clip renamed into place with an empty ``zarr.json`` was
counted complete; a store whose first run was killed failed with zarr's "Consolidated metadata
requested ... not found in ''". Each test damages a private copy of the session's store.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from drivegen.data import store
from drivegen.data.dataset import ClipDataset
from drivegen.data.preprocess import ClipConfig, ConditionsConfig, PreprocessConfig, run
from drivegen.data.preprocess.config import SplitConfig
from drivegen.errors import StoreError

SHARD = "images/c/0/0/0/0/0"  # the one shard of a clip's images (T K H W 3: one per clip)


@pytest.fixture(scope="module", autouse=True)
def _ray_down():
    yield
    import ray

    ray.shutdown()


def _config(train_data, out: Path, **kw) -> PreprocessConfig:
    """The settings the trainer's ensure_store wrote the session store with (a rerun must match)."""
    return PreprocessConfig(input_root=train_data.logs, out=str(out), progress=False,
                            conditions=ConditionsConfig(image_size=list(train_data.image_size), bev=False),
                            clip=ClipConfig(length=train_data.clip_length, stride=train_data.clip_length),
                            split=SplitConfig(val_logs=train_data.val_logs), **kw)


def _arrays(out: Path, clip: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(out / "clips" / clip, mode="r")
    return {name: group[name][...] for name in group.array_keys()}


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "clips").rglob("*") if p.is_file()}


class TestReader:
    """ClipDataset checks each clip's files against its manifest on every access."""

    def test_deleted_shard_is_an_error_naming_the_clip_never_zeros(self, copy_store):
        ds = ClipDataset(copy_store, datasets=["nuscenes"])
        clip = ds[0]["clip"]
        (copy_store / "clips" / clip / SHARD).unlink()
        for reader in (ds, ClipDataset(copy_store, datasets=["nuscenes"])):  # one already open, one opened after the damage
            with pytest.raises(StoreError, match=rf"clip '{clip}'.*{SHARD} is missing.*python -m drivegen.preprocess"):
                reader[0]

    def test_zarr_read_error_is_a_store_error_naming_the_clip(self, copy_store):
        # A flipped byte in the shard's index (its last bytes, guarded by a CRC32C): same size, so
        # the cheap check passes, and zarr's own checksum error must not reach the user raw.
        ds = ClipDataset(copy_store, datasets=["nuscenes"])
        clip = ds[0]["clip"]
        shard = copy_store / "clips" / clip / SHARD
        data = bytearray(shard.read_bytes())
        data[-6] ^= 0xFF
        shard.write_bytes(bytes(data))
        with pytest.raises(StoreError, match=rf"clip '{clip}'.*cannot be read.*verify=true"):
            ds[0]

    def test_first_run_killed_store_names_the_path_and_the_rerun(self, train_data, tmp_path):
        # What a first run killed before its end leaves: the root, some finished clips, no
        # consolidated metadata.
        out = tmp_path / "killed.zarr"
        settings = json.loads((Path(train_data.store) / "zarr.json").read_text())["attributes"]["drivegen"]["settings"]
        store.open_store(out, settings)
        clip = sorted(store.completed_clips(train_data.store))[0]
        shutil.copytree(Path(train_data.store) / "clips" / clip, out / "clips" / clip)
        with pytest.raises(StoreError, match=rf"{out}.*interrupted.*rerun `python -m drivegen.preprocess out={out}`"):
            ClipDataset(out)


class TestVerifyAndRepair:
    """verify=true finds every damaged clip (a deleted shard, bytes flipped in place, a clip with
    an empty zarr.json and no manifest) and changes no clip; the next normal run rewrites exactly
    those clips, identical to before; the summary is printed with progress=false."""

    def test_verify_finds_damage_and_next_run_rewrites_it(self, train_data, copy_store, capsys):
        clips = sorted(store.completed_clips(copy_store))
        deleted, flipped, emptied = clips[:3]
        before = {c: _arrays(copy_store, c) for c in (deleted, flipped, emptied)}
        (copy_store / "clips" / deleted / SHARD).unlink()
        layout = copy_store / "clips" / flipped / "layout/c/0/0/0/0/0"
        data = bytearray(layout.read_bytes())
        data[len(data) // 2] ^= 0xFF
        layout.write_bytes(bytes(data))  # same size: only the checksum can tell
        (copy_store / "clips" / emptied / "zarr.json").write_text("")
        (copy_store / "clips" / emptied / store.MANIFEST).unlink()
        untouched = {k: v for k, v in _files(copy_store).items() if not k.startswith(tuple(f"clips/{c}/" for c in before))}

        # 1. verify: every damaged clip, nothing written into clips/, exit code 1 from the CLI.
        result = run(_config(train_data, copy_store, verify=True))
        assert set(result["broken"]) == {deleted, flipped, emptied}
        assert "checksum" in result["broken"][flipped] and "missing" in result["broken"][deleted]
        cli = subprocess.run([sys.executable, "-m", "drivegen.preprocess", f"out={copy_store}", "verify=true"],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 1, cli.stderr[-2000:]
        assert all(c in cli.stderr for c in (deleted, flipped, emptied))
        assert {k: v for k, v in _files(copy_store).items() if k in untouched} == untouched

        # 2. the next normal run rewrites exactly those three, as they were.
        capsys.readouterr()
        report = run(_config(train_data, copy_store))
        assert report["totals"]["clips_written"] == 3 and report["failed"] == []
        assert "3 clips written" in capsys.readouterr().err  # the summary, although progress=false
        assert store.verify_store(copy_store)["broken"] == {}
        assert not (copy_store / store.VERIFY).exists()
        for clip, arrays in before.items():
            after = _arrays(copy_store, clip)
            assert after.keys() == arrays.keys()
            for name in arrays:
                np.testing.assert_array_equal(after[name], arrays[name], err_msg=f"{clip}/{name}")
        assert {k: v for k, v in _files(copy_store).items() if k in untouched} == untouched
        for dataset in ("nuscenes", "waymo"):
            ds = ClipDataset(copy_store, datasets=[dataset])
            for i in range(len(ds)):
                ds[i]


class TestStoresBeforeManifests:
    """A whole clip written before manifests existed is kept and given one (no rebuild of existing
    stores); one missing a shard is removed for rewriting."""

    def test_whole_legacy_clip_is_adopted_and_broken_one_removed(self, copy_store):
        whole, broken = sorted(store.completed_clips(copy_store))[:2]
        for clip in (whole, broken):
            (copy_store / "clips" / clip / store.MANIFEST).unlink()
        (copy_store / "clips" / broken / SHARD).unlink()
        removed = store.repair(copy_store)
        assert set(removed) == {broken} and f"{SHARD}" in removed[broken]
        store.check_clip(copy_store, whole, full=True)
        assert not (copy_store / "clips" / broken).exists()
