"""A wheel of the project, installed without ``-e`` into a fresh environment, runs the main entry
point from an unrelated working folder: the configs and the shipped scenario travel inside the
package, and no code finds files through the source checkout.

The fresh environment reuses the dependencies already installed for the tests (a ``.pth`` line
pointing at this interpreter's site-packages; an editable install's hooks there are not run, since
``.pth`` files are processed only in site directories), so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(REPO)], check=True, cwd=root)
    wheel = next((root / "dist").glob("drivegen-*.whl"))
    venv.EnvBuilder(with_pip=False).create(root / "env")
    python = root / "env" / "bin" / "python"
    env_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    (env_site / "reuse_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                    str(env_site), str(wheel)], check=True)
    return wheel, python


class TestWheel:
    """The wheel holds the configs and the sample VAE, and runs ``python -m drivegen.train`` from any folder."""

    def test_wheel_ships_configs_and_scenarios(self, wheel_env):
        names = set(zipfile.ZipFile(wheel_env[0]).namelist())
        assert {"drivegen/configs/train.yaml", "drivegen/configs/model/tiny.yaml", "drivegen/configs/preprocess.yaml",
                "drivegen/configs/generate.yaml", "drivegen/generate/scenarios/sample_edit.yaml",
                "chopgrad_core/configs/finetune.yaml", "drivegen/model/assets/sample_vae/config.json",
                "drivegen/model/assets/sample_vae/diffusion_pytorch_model.safetensors"} <= names

    def test_installed_train_runs_from_another_folder(self, wheel_env, one_scene_sample, tmp_path):
        """The installed entry point preprocesses logs into a store and trains from an unrelated
        folder. The logs: the session's sample logs (tests/conftest.py, read-only: the run only reads
        them), not a fresh write of the full sample world; drivegen.data.sample_data reads no file
        of the package (pure code, shipped like every module), and make train's run in
        tests/test_readme_commands.py writes the logs through the entry point."""
        _, python = wheel_env
        work = tmp_path / "elsewhere"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
        code = "import drivegen, sys; print(drivegen.__file__)"
        where = subprocess.run([str(python), "-c", code], cwd=work, env=env, check=True, capture_output=True,
                               text=True).stdout.strip()
        assert str(REPO) not in where, f"drivegen imported from the checkout: {where}"
        cmd = [str(python), "-m", "drivegen.train", "trainer.steps=1", "trainer.sample_steps=0",
               "trainer.tensorboard=false", "data.image_size=[32,48]", f"data.logs={one_scene_sample.root}",
               f"data.store={work / 'clips.zarr'}", f"trainer.out={work / 'out'}"]
        run = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert (work / "out" / "checkpoint-00000001" / "model.safetensors").is_file()
        assert len(json.loads((work / "out" / "history.json").read_text())) == 1
