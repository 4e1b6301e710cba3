"""python -m drivegen.train's embedded default path: logs -> store -> training on the sample world."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from drivegen.sample_data import generate_sample_logs
from drivegen.train import DataConfig, TrainConfig, Trainer, TrainerConfig
from drivegen.train.config import TrainConfigError


class TestTrainer:
    """From sample logs alone, the trainer builds the store, trains, and writes a checkpoint, a loss
    history and a loss curve; the flow-matching loss falls."""

    def test_sample_world_trains_and_writes_outputs(self, tmp_path):
        logs = tmp_path / "logs"
        generate_sample_logs(logs)
        cfg = TrainConfig(
            data=DataConfig(logs=str(logs), store=str(tmp_path / "clips.zarr"), image_size=[32, 48]),
            trainer=TrainerConfig(steps=30, lr=3e-3, out=str(tmp_path / "out")),
        )
        summary = Trainer(cfg).train()
        assert summary["flow_last"] < 0.9 * summary["flow_first"]
        out = tmp_path / "out"
        assert load_file(out / "model.safetensors")
        assert len(json.loads((out / "history.json").read_text())) == 30
        assert (out / "loss.png").stat().st_size > 0

    def test_clip_length_must_fit_the_vae(self):
        with pytest.raises(TrainConfigError, match=r"data.clip_length=6 must be 1 \+ 4k"):
            DataConfig(clip_length=6)
