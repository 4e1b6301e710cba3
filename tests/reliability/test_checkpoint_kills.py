"""Checkpoints survive a kill at any point of a save (issue 17, item 4).

Each save is killed in a forked child at every call of ``os.replace`` (each file of the folder,
its manifest, the folder's rename, moving an old folder of the same step aside, the ``latest``
pointer, pruning the oldest checkpoint, the run's history and loss curve) with ``os._exit``:
like SIGKILL, no cleanup handler runs, so the run folder is left exactly as a real kill leaves
it. Then resuming finds the newest complete checkpoint and loads it, and the next save tidies
what the kill left.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from drivegen.model import checkpoint as ckpt


def _replace_calls(trainer, out: Path, step: int) -> int:
    """How many os.replace calls one save makes (counted on a throwaway copy)."""
    calls = []
    real = os.replace

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    trainer.out, trainer.step = out, step
    os.replace = counting
    try:
        trainer.save()
    finally:
        os.replace = real
    return len(calls)


def _save_killed_at(trainer, out: Path, step: int, index: int) -> None:
    """trainer.save() at ``step`` into ``out`` in a forked child that dies at os.replace call ``index``."""
    pid = os.fork()
    if pid == 0:  # the child: die on the index-th rename, as a kill -9 would
        calls = [0]
        real = os.replace

        def dying(*args, **kwargs):
            if calls[0] == index:
                os._exit(17)
            calls[0] += 1
            return real(*args, **kwargs)

        os.replace = dying
        try:
            trainer.out, trainer.step = out, step
            trainer.save()
        finally:
            os._exit(0)  # the save finished without reaching the kill point
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 17, f"the save never reached os.replace call {index}"


class TestKilledSave:
    """A save killed at any os.replace leaves the run resumable from the newest complete
    checkpoint: the new one if its folder rename happened, else the previous one; a kill while
    replacing a checkpoint of the same step falls back to the copy set aside. The next save
    leaves no temporary folder behind."""

    def _expect_resume(self, trainer, out: Path, steps_before: set[int], new_step: int):
        latest = ckpt.find_latest(out)
        assert latest is not None, "no checkpoint found after the kill"
        step = int(ckpt.read_metadata(latest / "model.safetensors")["step"])
        newest_complete = max(steps_before | ({new_step} if (out / f"checkpoint-{new_step:08d}").is_dir() else set()))
        assert step == newest_complete
        saved = ckpt.load_tensors(latest / "model.safetensors")  # complete: its manifest matches
        trainer.resume(latest)
        assert trainer.step == step
        for name, value in trainer.model.state_dict().items():
            assert torch.equal(value, saved[name]), name
        return step

    def test_kill_at_every_rename_of_a_new_step_resumes_newest_complete(self, trained, copy_run, tmp_path,
                                                                        monkeypatch):
        monkeypatch.setattr(trained.cfg.trainer, "keep_checkpoints", 1)  # the save also prunes checkpoint-1
        n = _replace_calls(trained, Path(shutil.copytree(copy_run, tmp_path / "count")), 2)
        assert n >= 8  # model, optimizer, history, rng, manifest, folder, pointer, pruning, run history
        resumed = set()
        for index in range(n):
            out = Path(shutil.copytree(copy_run, tmp_path / f"kill{index}"))
            _save_killed_at(trained, out, 2, index)
            resumed.add(self._expect_resume(trained, out, {1}, 2))
            # The next save tidies up: no temporary folder of the killed save is left.
            trained.out, trained.step = out, 3
            trained.save()
            assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
            assert ckpt.find_latest(out).name == "checkpoint-00000003"
            assert (out / ckpt.LATEST).read_text().strip() == "checkpoint-00000003"
        assert resumed == {1, 2}, "the kills never fell on both sides of the folder's rename"

    def test_kill_while_replacing_the_same_step_resumes_from_the_copy_set_aside(self, trained, copy_run, tmp_path):
        # The run folder already holds checkpoint-1; saving step 1 again replaces it.
        n = _replace_calls(trained, Path(shutil.copytree(copy_run, tmp_path / "count")), 1)
        for index in range(n):
            out = Path(shutil.copytree(copy_run, tmp_path / f"kill{index}"))
            _save_killed_at(trained, out, 1, index)
            assert self._expect_resume(trained, out, {1}, 1) == 1
            trained.out, trained.step = out, 1
            trained.save()  # puts a set-aside copy back or removes it, then saves
            assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-00000001"]


class TestCheckpointPaths:
    """Paths in a checkpoint's config are absolute, so generation from another folder finds the
    store (issue 17, item 8: a relative data.store sent generate to the wrong fix)."""

    def test_relative_store_path_is_saved_absolute(self, trained, tmp_path, monkeypatch):
        store = Path(trained.cfg.data.store)
        monkeypatch.chdir(store.parent)
        monkeypatch.setattr(trained.cfg.data, "store", store.name)  # as typed: data.store=clips.zarr
        trained.out, trained.step = tmp_path / "rel", 1
        folder = trained.save()
        config = json.loads(ckpt.read_metadata(folder / "model.safetensors")["config"])
        assert config["data"]["store"] == str(store)


class TestFreshRunIntoOldRun:
    """A fresh run into a trainer.out that holds checkpoints is refused, naming the keys that
    continue or replace it (before: it silently overwrote the checkpoint)."""

    def test_fresh_run_into_a_run_folder_is_refused(self, trained, copy_run):
        from dataclasses import replace

        from drivegen.errors import TrainConfigError
        from drivegen.train import TrainConfig, Trainer

        before = sorted(p.name for p in copy_run.iterdir())
        cfg = TrainConfig(data=trained.cfg.data, model=trained.cfg.model,
                          trainer=replace(trained.cfg.trainer, out=str(copy_run), resume=None, overwrite=False))
        with pytest.raises(TrainConfigError, match=r"trainer\.resume=auto.*trainer\.overwrite=true"):
            Trainer(cfg)
        assert sorted(p.name for p in copy_run.iterdir()) == before
