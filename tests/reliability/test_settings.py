"""Bad settings fail before any work, naming the key (issue 17, items 3 and 5).

Before: ``trainer.grad_clip=-1`` was accepted and flipped the gradients; ``trainer.save_every=-1``
was accepted; ``data.batch_size=0`` ended in ZeroDivisionError after the model was built;
``trainer.steps=abc`` in a TypeError deep in the loop; ``scenarios=[a.yaml,b.yaml]`` (README) failed
with "Could not override 'scenarios'".
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from drivegen.config import compose
from drivegen.errors import ConfigError


class TestTrainSettings:
    """Each bad training setting of the issue is refused when the config is built, with the key
    and the value in the message; from the command line nothing is created before the refusal."""

    @pytest.mark.parametrize("override, key", [
        ("trainer.grad_clip=-1", "trainer.grad_clip"),
        ("trainer.save_every=-1", "trainer.save_every"),
        ("data.batch_size=0", "data.batch_size"),
        ("trainer.steps=abc", "trainer.steps"),
    ])
    def test_bad_setting_names_the_key(self, override, key):
        from drivegen.train.config import TrainConfig

        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            compose(TrainConfig, "train", [override])

    def test_cli_refuses_before_any_work(self, tmp_path):
        logs, store, out = tmp_path / "logs", tmp_path / "clips.zarr", tmp_path / "out"
        proc = subprocess.run([sys.executable, "-m", "drivegen.train", "trainer.grad_clip=-1", f"data.logs={logs}",
                               f"data.store={store}", f"trainer.out={out}"],
                              capture_output=True, text=True, timeout=180, cwd=tmp_path)
        assert proc.returncode != 0
        assert "trainer.grad_clip" in proc.stderr and "-1" in proc.stderr, proc.stderr[-2000:]
        assert not logs.exists() and not store.exists() and not out.exists()


class TestOtherSettings:
    """The README's batch command parses; preprocessing's verify key is typed."""

    def test_scenarios_list_from_the_command_line(self):
        from drivegen.generate.config import GenerateConfig

        assert compose(GenerateConfig, "generate", ["scenarios=[a.yaml,b.yaml]"]).scenarios == ["a.yaml", "b.yaml"]

    def test_preprocess_verify_is_a_bool(self):
        from drivegen.data.preprocess import PreprocessConfig

        assert compose(PreprocessConfig, "preprocess", ["verify=true"]).verify is True
        with pytest.raises(ConfigError, match="verify"):
            compose(PreprocessConfig, "preprocess", ["verify=sometimes"])
