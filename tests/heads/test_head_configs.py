"""The finetune presets are validated against the dataclasses, and restore's options are its documented ones."""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from chopgrad_core.config import ChopGradConfig
from chopgrad_core.errors import ChopGradError, HeadConfigError
from chopgrad_core.heads import HEADS, HeadModelConfig, make_head
from chopgrad_core.heads.data import HeadDataConfig, ensure_root
from chopgrad_core.heads.finetune import CONFIG_DIR, FinetuneConfig, HeadTrainConfig, from_hydra, load_config
from chopgrad_core.video import VideoError

REPO = Path(__file__).parents[2]
DATA_PRESETS = ("sample", "folder")

# Preset values that differ from their dataclass default, with the reason; the preset's YAML line
# for that key carries the same reason in its comment.
DIFFERS = {
    ("data/folder", "root"): "your folder (data.root=/path/to/videos); empty is refused",
    ("data/folder", "prepare"): "nothing to make, a missing root is an error",
    ("data/folder", "frames"): "real videos have the frames for longer clips",
    ("data/folder", "crop"): "real videos are larger than the sample",
}


def _compose(*overrides: str):
    """Hydra's composed config, as ``python -m chopgrad_core.heads.finetune *overrides`` sees it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="finetune", overrides=list(overrides))


def _yaml(name: str) -> dict:
    """A preset file's own keys (without its defaults list), not merged with anything."""
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    raw.pop("defaults", None)
    raw.pop("hydra", None)
    return raw


def _field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _check_section(preset: str, written: dict, composed: dict, default) -> None:
    """Same keys as the dataclass; every value its default unless DIFFERS lists (and the YAML says) why."""
    assert set(written) == _field_names(type(default)), f"{preset}: keys differ from {type(default).__name__}"
    expected = asdict(default)
    text = (CONFIG_DIR / f"{preset.split(':')[0]}.yaml").read_text()
    for key, value in composed.items():
        reason = DIFFERS.get((preset, key))
        if reason is None:
            assert value == expected[key], f"{preset}: {key}={value!r} but the dataclass default is {expected[key]!r}"
        else:
            assert value != expected[key], f"{preset}: {key} no longer differs; drop it from DIFFERS"
            line = next(ln for ln in text.splitlines() if ln.startswith(f"{key}:"))
            assert "#" in line and reason in line.split("#", 1)[1], f"{preset}: {key}'s comment must say {reason!r}"


class TestPresetsMirrorDataclasses:
    """finetune.yaml and each task/ and data/ preset compose through Hydra with the dataclass schemas,
    list exactly the dataclass fields, and hold the dataclass defaults (FinetuneConfig's, for its
    sections) except where DIFFERS gives a reason that the preset's comment repeats."""

    def test_finetune_yaml_sections_equal_finetune_config_defaults(self):
        written, composed = _yaml("finetune"), OmegaConf.to_container(_compose())
        assert set(written) | {"task", "data"} == _field_names(FinetuneConfig)
        defaults = {f.name: f.default_factory() for f in fields(FinetuneConfig) if f.name in written}
        assert isinstance(defaults["chopgrad"], ChopGradConfig) and isinstance(defaults["train"], HeadTrainConfig)
        assert isinstance(defaults["model"], HeadModelConfig)
        for section, default in defaults.items():
            _check_section(f"finetune:{section}", written[section], composed[section], default)

    @pytest.mark.parametrize("task", list(HEADS))
    def test_task_preset_equals_its_config_defaults(self, task):
        composed = OmegaConf.to_container(_compose(f"task={task}"))
        _check_section(f"task/{task}", _yaml(f"task/{task}"), composed["task"], HEADS[task][0]())

    @pytest.mark.parametrize("data", DATA_PRESETS)
    def test_data_preset_equals_data_config_defaults(self, data):
        composed = OmegaConf.to_container(_compose(f"data={data}"))
        _check_section(f"data/{data}", _yaml(f"data/{data}"), composed["data"], HeadDataConfig())

    def test_every_preset_file_is_tested(self):
        assert sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml")) == sorted(HEADS)
        assert sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")) == sorted(DATA_PRESETS)

    @pytest.mark.parametrize("task", list(HEADS))
    def test_composed_preset_builds_typed_dataclasses(self, task):
        cfg = load_config([f"task={task}", "data=folder", "data.root=/videos"])
        assert type(cfg.task) is HEADS[task][0] and isinstance(cfg.data, HeadDataConfig)
        assert cfg.data.root == "/videos" and cfg.chopgrad.loss == "mse"


class TestBadOverrides:
    """Hydra validates overrides against the dataclasses: a wrong type or an unknown key fails naming the
    key; the dataclass checks name the key and value; a preset's required value left empty is named."""

    def test_wrong_type_names_key(self):
        with pytest.raises(Exception) as err:
            _compose("train.steps=many")
        text = f"{err.value} {err.value.__cause__}"
        assert "train.steps" in text and "many" in text

    def test_wrong_list_item_type_names_key(self):
        with pytest.raises(Exception) as err:
            _compose("data.crop=[a,64]")
        assert "data.crop" in f"{err.value} {err.value.__cause__}"

    def test_unknown_key_names_it(self):
        with pytest.raises(Exception, match=r"train.stepz"):
            _compose("train.stepz=3")

    def test_bad_value_names_key_and_value(self):
        with pytest.raises(HeadConfigError, match=r"train.lr=-1.0 must be > 0"):
            load_config(["train.lr=-1"])

    def test_folder_without_root_names_key(self):
        with pytest.raises(HeadConfigError, match=r"data.root is empty.*data.root=/path"):
            load_config(["data=folder"])

    def test_task_name_override_is_refused(self):
        with pytest.raises(HeadConfigError, match=r"task.name='inpaint'.*task=<name>"):
            load_config(["task.name=inpaint"])

    def test_unknown_task_key_names_it(self):
        with pytest.raises(ChopGradError, match="task=sr.*bogus"):
            make_head({"name": "sr", "bogus": 1})

    def test_bad_scale_names_key(self):
        with pytest.raises(HeadConfigError, match="task.scale=3"):
            load_config(["task.scale=3"])

    def test_missing_root_without_prepare_names_key(self, tmp_path):
        with pytest.raises(VideoError, match="data.root=.*does not exist"):
            ensure_root(HeadDataConfig(root=str(tmp_path / "nothing"), prepare=None))

    def test_missing_root_with_uninstalled_module_names_command_and_key(self, tmp_path):
        cfg = HeadDataConfig(root=str(tmp_path / "nothing"), prepare=["no_such_pkg_xyz.make", "--out", "x"])
        with pytest.raises(VideoError) as err:
            ensure_root(cfg)
        assert "`python -m no_such_pkg_xyz.make --out x`" in str(err.value) and "(data.prepare)" in str(err.value)

    def test_pairs_for_other_tasks_are_refused(self):
        with pytest.raises(HeadConfigError, match="data.degraded_root"):
            FinetuneConfig(task=make_head({"name": "sr"}).config, data=HeadDataConfig(degraded_root="/x"))

    def test_from_hydra_names_unset_required_value(self):
        cfg = _compose()
        cfg.train.out = "???"
        with pytest.raises(HeadConfigError, match=r"train.out has no value"):
            from_hydra(cfg)


class TestConfigDir:
    """The finetune configs are found through one absolute path: the packaged copy
    (chopgrad_core/configs) when present, else the source checkout's configs/finetune; both hold
    the same files here."""

    def test_config_dir_is_absolute_and_holds_finetune_yaml(self):
        assert CONFIG_DIR.is_absolute() and (CONFIG_DIR / "finetune.yaml").is_file()
        assert (CONFIG_DIR / "finetune.yaml").read_text() == (REPO / "configs/finetune/finetune.yaml").read_text()

    def test_falls_back_to_checkout_without_packaged_copy(self, monkeypatch):
        import importlib.resources

        from chopgrad_core.heads import finetune

        monkeypatch.setattr(importlib.resources, "files", lambda _: Path("/nonexistent-package-dir"))
        assert finetune.config_dir() == REPO / "configs" / "finetune"


class TestRestoreOptionsDocumented:
    """python -m chopgrad_core.heads.restore: its argparse options are restore_video's parameters one to
    one, and each is documented in the module docstring and in the README's heads section."""

    def _options(self) -> dict[str, str]:
        from chopgrad_core.heads.restore import build_parser

        # dest -> how it is written on the command line (positional name or --flag)
        return {a.dest: (a.option_strings[0] if a.option_strings else a.dest)
                for a in build_parser()._actions if a.dest != "help"}

    def test_parser_options_equal_restore_video_parameters(self):
        from chopgrad_core.heads.restore import restore_video

        assert set(self._options()) == set(inspect.signature(restore_video).parameters)

    def test_every_option_is_in_the_module_docstring(self):
        import chopgrad_core.heads.restore as restore

        documented = set(re.findall(r"^- ``(-*[a-z]+)``:", restore.__doc__, flags=re.M))
        assert documented == set(self._options().values())

    def test_every_flag_is_in_the_readme(self):
        readme = (REPO / "README.md").read_text()
        section = readme[readme.index("## chopgrad_core task heads"):]
        line = next(ln for ln in section.splitlines() if "chopgrad_core.heads.restore" in ln)
        assert all(flag in line for flag in self._options().values() if flag.startswith("--"))
