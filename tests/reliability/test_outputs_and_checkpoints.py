"""Unwritable outputs fail before any work; damaged checkpoints and report.json failures are the
project's errors naming the file (issue 17, items 6 and 7).

The tests run as root, where chmod stops no write: an unwritable output is a path under a regular
file (``unwritable``), where creating the folder fails for everyone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chopgrad_core.errors import OutputNotWritableError
from drivegen.errors import CheckpointError, GenerateConfigError


class TestUnwritableOutputs:
    """train, generate, finetune and restore check their output before reading or computing anything."""

    def test_train(self, unwritable, tmp_path):
        from drivegen.train import DataConfig, TrainConfig, Trainer, TrainerConfig

        logs, store = tmp_path / "logs", tmp_path / "clips.zarr"
        cfg = TrainConfig(data=DataConfig(logs=str(logs), store=str(store), image_size=[32, 48]),
                          trainer=TrainerConfig(out=str(unwritable), tensorboard=False))
        with pytest.raises(OutputNotWritableError, match=rf"trainer\.out='{unwritable}'"):
            Trainer(cfg)
        assert not logs.exists() and not store.exists()  # no sample logs, no preprocessing

    def test_generate(self, unwritable, tmp_path):
        from drivegen.generate.batch import run
        from drivegen.generate.config import GenerateConfig

        # A missing checkpoint would be a CheckpointError: the output is checked before it.
        with pytest.raises(GenerateConfigError, match=rf"out='{unwritable}'"):
            run(GenerateConfig(out=str(unwritable), checkpoint=str(tmp_path / "no-run"), progress=False))

    def test_finetune(self, unwritable, tmp_path, monkeypatch):
        from chopgrad_core.heads.finetune import finetune, load_config

        monkeypatch.chdir(tmp_path)  # the default data (datasets/sample/...) would be made here
        with pytest.raises(OutputNotWritableError, match=r"train\.out"):
            finetune(load_config(["task=sr", f"train.out={unwritable}"]), show_progress=False)
        assert not (tmp_path / "datasets").exists()

    def test_restore(self, unwritable, tmp_path):
        from chopgrad_core.heads.restore import restore_video

        # A missing checkpoint or input would fail later: the output folder is checked first.
        with pytest.raises(OutputNotWritableError, match="output"):
            restore_video(tmp_path / "head.safetensors", tmp_path / "in.mp4", unwritable / "out.mp4")


class TestReportFailure:
    """When report.json cannot be written, generate still shows each scenario's own failure: in
    the summary and in the error it raises (before: the write's crash hid the reason)."""

    def test_scenario_reason_survives_a_failing_report(self, trained, run_folder, tmp_path, capsys):
        from drivegen.generate.batch import run
        from drivegen.generate.config import GenerateConfig

        scenario = tmp_path / "dragon.yaml"
        text = (Path(__file__).resolve().parents[2] / "drivegen/generate/scenarios/sample_edit.yaml").read_text()
        scenario.write_text(text.replace("name: sample_edit", "name: dragon").replace("class: car", "class: dragon"))
        out = tmp_path / "gen"
        (out / "report.json").mkdir(parents=True)  # a folder where the file must go: the write fails
        (out / "report.json" / "keep").write_text("")
        with pytest.raises(GenerateConfigError, match=r"report\.json cannot be written.*dragon.*dragon") as err:
            run(GenerateConfig(checkpoint=str(run_folder), scenarios=[str(scenario)], out=str(out), progress=False))
        assert "class" in str(err.value)
        summary = capsys.readouterr().err
        assert "dragon" in summary and "failed" in summary


class TestDamagedCheckpoint:
    """A truncated, header-corrupt or bit-flipped safetensors file is a CheckpointError naming the
    file, from training's resume and from generation (before: SafetensorError with no path)."""

    def _damage(self, copy_run: Path, name: str, how: str) -> Path:
        file = copy_run / "checkpoint-00000001" / name
        data = bytearray(file.read_bytes())
        if how == "truncate":
            data = data[: len(data) // 2]
        elif how == "header":
            data[8:24] = b"\xff" * 16
        else:  # a flipped bit in the tensor data: same size, valid header
            data[-5] ^= 0x01
        file.write_bytes(bytes(data))
        return file

    @pytest.mark.parametrize("name, how", [("model.safetensors", "header"), ("optimizer.safetensors", "flip")])
    def test_train_resume_names_the_file(self, trained, copy_run, name, how):
        from dataclasses import replace

        from drivegen.train import TrainConfig, Trainer

        file = self._damage(copy_run, name, how)
        cfg = trained.cfg
        cfg = TrainConfig(data=cfg.data, model=cfg.model,
                          trainer=replace(cfg.trainer, out=str(copy_run), resume=str(file.parent)))
        with pytest.raises(CheckpointError, match=str(file)):
            Trainer(cfg)

    @pytest.mark.parametrize("name, how", [("model.safetensors", "flip"), ("model.safetensors", "truncate"),
                                           ("vae/diffusion_pytorch_model.safetensors", "truncate")])
    def test_generate_names_the_file(self, trained, copy_run, tmp_path, name, how):
        from drivegen.generate.batch import run
        from drivegen.generate.config import GenerateConfig

        file = self._damage(copy_run, name, how)
        with pytest.raises(CheckpointError, match=str(file)):
            run(GenerateConfig(checkpoint=str(copy_run), out=str(tmp_path / "gen"), progress=False, ema=False))
