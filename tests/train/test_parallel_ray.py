"""``launcher=ray``: Ray Train's TorchTrainer with two CPU workers on an embedded Ray runs the
same loop (gloo process group, FSDP2, sharded checkpoint) for a few steps and leaves a checkpoint
that resumes and that generation loads."""

from __future__ import annotations

import dataclasses
import json

import pytest

from drivegen.train import TrainConfig, TrainerConfig


@pytest.fixture()
def embedded_ray():
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


class TestRayTrain:
    def test_two_cpu_workers_train_and_checkpoint(self, embedded_ray, parallel_store, tmp_path):
        from drivegen.model.checkpoint import load_trained
        from drivegen.train.launch import run_ray

        out = tmp_path / "out"
        cfg = TrainConfig(launcher="ray", data=dataclasses.replace(parallel_store, batch_size=2),
                          trainer=TrainerConfig(steps=2, num_workers=2, sample_steps=0, tensorboard=False, out=str(out)))
        result = run_ray(cfg)
        assert result.error is None
        checkpoint = out / "checkpoint-00000002"
        assert (checkpoint / "dcp" / ".metadata").is_file() and (checkpoint / "model.safetensors").is_file()
        history = json.loads((out / "history.json").read_text())
        assert len(history) == 2 and all(r["total"] > 0 for r in history)
        assert load_trained(out).folder == checkpoint
