"""The YAML presets under configs/ mirror the dataclasses that are their one source of truth.

For every entry point (preprocess, train with each of its group presets, generate): the preset has
exactly the dataclass's keys (no YAML-only key, none missing), and every value equals the
dataclass default unless this file lists the key with the reason the preset gives in a comment.
Composing each entry point through Hydra (with its registered schema) gives the same checked
dataclass, and a value of the wrong type fails naming the key. (The heads' finetune presets have
their own test in tests/heads/test_head_configs.py.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from chopgrad_core.config import PRESETS, ChopGradConfig
from drivegen.config import CONFIG_DIR, compose
from drivegen.data.preprocess import PreprocessConfig
from drivegen.errors import ConfigError
from drivegen.evaluate.config import EvaluateConfig
from drivegen.generate.config import GenerateConfig
from drivegen.model.controlled_wan import ModelConfig
from drivegen.model.objective import ObjectiveConfig
from drivegen.preview.config import PreviewConfig
from drivegen.train.config import DataConfig, TrainConfig, TrainerConfig

HYDRA_KEYS = {"defaults", "hydra"}
TRAIN_ROOT_KEYS = {"launcher", "ray"}  # TrainConfig fields written inline in train.yaml, not as groups

# (preset file, key) -> why the preset differs from the dataclass default (the same words stand
# as a comment beside the key in the YAML file).
DIFFERS = {
    ("model/tiny.yaml", "control_input"): "the control also enters the main stream",
    ("model/tiny.yaml", "control_skip"): "x0 = control-video latents + the transformer's output",
    ("model/tiny.yaml", "vae"): "the tiny VAE fitted to the sample world",
    ("model/tiny.yaml", "patch_size"): "the sample VAE compresses 4x in space",
    ("model/wan2.1_vace_1.3b.yaml", "num_attention_heads"): "the released checkpoint's shape",
    ("model/wan2.1_vace_1.3b.yaml", "attention_head_dim"): "the released checkpoint's shape",
    ("model/wan2.1_vace_1.3b.yaml", "num_layers"): "the released checkpoint's shape",
    ("model/wan2.1_vace_1.3b.yaml", "ffn_dim"): "the released checkpoint's shape",
    ("model/wan2.1_vace_1.3b.yaml", "text_dim"): "the released checkpoint's shape",
    ("model/wan2.1_vace_1.3b.yaml", "vace_layers"): "the released checkpoint's shape",
    ("model/wan2.1_vace_14b.yaml", "num_attention_heads"): "the released checkpoint's shape",
    ("model/wan2.1_vace_14b.yaml", "attention_head_dim"): "the released checkpoint's shape",
    ("model/wan2.1_vace_14b.yaml", "num_layers"): "the released checkpoint's shape",
    ("model/wan2.1_vace_14b.yaml", "ffn_dim"): "the released checkpoint's shape",
    ("model/wan2.1_vace_14b.yaml", "text_dim"): "the released checkpoint's shape",
    ("model/wan2.1_vace_14b.yaml", "vace_layers"): "the released checkpoint's shape",
    ("trainer/gpu.yaml", "steps"): "a fine-tuning run, not the CPU demo",
    ("trainer/gpu.yaml", "lr"): "pretrained weights take a 10x smaller step than the random tiny model",
    ("trainer/gpu.yaml", "gradient_checkpointing"): "480x832 multi-camera clips do not fit their activations otherwise",
    ("trainer/gpu.yaml", "save_every"): "hours-long runs checkpoint as they go",
    ("trainer/gpu.yaml", "resume"): "a restarted job continues from its newest checkpoint",
    ("trainer/gpu.yaml", "lr_warmup"): "warm up the AdamW moments before full steps on pretrained weights",
    ("trainer/gpu.yaml", "lr_schedule"): "decay over the run",
    ("trainer/gpu.yaml", "lr_min_ratio"): "end at a tenth of lr",
    ("trainer/gpu.yaml", "val_every"): "a val-split loss with every checkpoint",
    ("trainer/gpu.yaml", "use_gpu"): "Ray Train workers get a GPU each",
}


def _flatten(node: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in node.items():
        if not prefix and key in HYDRA_KEYS:
            continue
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _defaults(obj, only: set[str] | None = None) -> dict[str, object]:
    flat = {}
    for f in dataclasses.fields(obj):
        if only is not None and f.name not in only:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            flat.update({f"{f.name}.{k}": v for k, v in _defaults(value).items()})
        else:
            flat[f.name] = list(value) if isinstance(value, tuple) else value
    return flat


def _check(preset: str, default_obj, expected: dict | None = None) -> None:
    raw = _flatten(yaml.safe_load((CONFIG_DIR / preset).read_text()) or {})
    want = expected if expected is not None else _defaults(default_obj)
    assert set(raw) == set(want), (f"{preset}: keys only in the YAML {sorted(set(raw) - set(want))}, "
                                   f"only in the dataclass {sorted(set(want) - set(raw))}")
    for key, value in raw.items():
        if (preset, key) in DIFFERS:
            assert value != want[key], f"{preset}: {key} is listed as differing but equals the default"
            continue
        assert value == want[key], f"{preset}: {key}={value!r}, dataclass default {want[key]!r}"


class TestPresetsMirrorDataclasses:
    """Every preset has the dataclass's keys and defaults (or a stated reason to differ)."""

    def test_preprocess_preset_mirrors_preprocess_config(self):
        _check("preprocess.yaml", PreprocessConfig())

    def test_generate_preset_mirrors_generate_config(self):
        _check("generate.yaml", GenerateConfig())

    def test_evaluate_preset_mirrors_evaluate_config(self):
        _check("evaluate.yaml", EvaluateConfig())

    def test_preview_preset_mirrors_preview_config(self):
        _check("preview.yaml", PreviewConfig())

    @pytest.mark.parametrize("preset, cls", [("model/tiny.yaml", ModelConfig), ("data/sample.yaml", DataConfig),
                                             ("objective/default.yaml", ObjectiveConfig),
                                             ("chopgrad/default.yaml", ChopGradConfig),
                                             ("trainer/cpu.yaml", TrainerConfig),
                                             ("trainer/gpu.yaml", TrainerConfig),
                                             ("model/wan2.1_vace_1.3b.yaml", ModelConfig),
                                             ("model/wan2.1_vace_14b.yaml", ModelConfig)])
    def test_train_group_preset_mirrors_its_dataclass(self, preset, cls):
        _check(preset, cls())

    def test_low_memory_preset_equals_chopgrad_presets_entry(self):
        _check("chopgrad/low_memory.yaml", None, _defaults(PRESETS["low_memory"]))

    def test_train_root_holds_the_groups_and_the_launcher(self):
        raw = yaml.safe_load((CONFIG_DIR / "train.yaml").read_text())
        assert set(raw) <= HYDRA_KEYS | TRAIN_ROOT_KEYS
        _check("train.yaml", None, _defaults(TrainConfig(), only=TRAIN_ROOT_KEYS))  # launcher and ray, inline
        groups = {next(iter(d)) for d in raw["defaults"] if isinstance(d, dict) and not next(iter(d)).startswith("override")}
        assert groups == {f.name for f in dataclasses.fields(TrainConfig)} - TRAIN_ROOT_KEYS
        assert raw["defaults"][0] == "train_schema"  # the schema first: presets and overrides are type-checked

    def test_every_group_dir_is_a_train_section(self):
        dirs = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
        assert dirs == ({f.name for f in dataclasses.fields(TrainConfig)} - TRAIN_ROOT_KEYS) | {"finetune"}


class TestComposedConfigs:
    """Hydra composes each entry point into its checked dataclass; a wrong type names the key."""

    def test_preprocess_composes_to_its_defaults(self):
        assert compose(PreprocessConfig, "preprocess") == PreprocessConfig()

    def test_generate_composes_to_its_defaults(self):
        assert compose(GenerateConfig, "generate") == GenerateConfig()

    def test_evaluate_composes_to_its_defaults(self):
        assert compose(EvaluateConfig, "evaluate") == EvaluateConfig()

    def test_preview_composes_to_its_defaults(self):
        assert compose(PreviewConfig, "preview") == PreviewConfig()

    def test_train_composes_to_its_presets(self):
        cfg = compose(TrainConfig, "train")
        assert cfg.trainer == TrainerConfig() and cfg.data == DataConfig() and cfg.chopgrad == ChopGradConfig()
        assert cfg.model == dataclasses.replace(ModelConfig(), control_input=True, control_skip=True, vae="sample",
                                                patch_size=[1, 4, 4])

    @pytest.mark.parametrize("name, cls, override, key", [
        ("train", TrainConfig, "trainer.steps=abc", "trainer.steps"),
        ("train", TrainConfig, "trainer.grad_clip=-1", "trainer.grad_clip"),
        ("train", TrainConfig, "trainer.save_every=-1", "trainer.save_every"),
        ("train", TrainConfig, "data.batch_size=0", "data.batch_size"),
        ("train", TrainConfig, "trainer.no_such_key=1", "no_such_key"),
        ("generate", GenerateConfig, "sampler.steps=many", "sampler.steps"),
        ("preprocess", PreprocessConfig, "clip.length=x", "clip.length"),
    ])
    def test_bad_value_fails_before_any_work_naming_the_key(self, name, cls, override, key):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            compose(cls, name, [override])

    def test_scenario_list_from_the_command_line(self):
        cfg = compose(GenerateConfig, "generate", ["scenarios=[a.yaml,b.yaml]"])
        assert cfg.scenarios == ["a.yaml", "b.yaml"]
