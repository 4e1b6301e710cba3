"""PreprocessConfig and configs/preprocess.yaml: the yaml mirrors the dataclasses 1:1, and a bad
value fails at load time with a message naming the key to set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from drivegen.preprocess import PreprocessConfig, PreprocessConfigError, load_config

YAML = Path(__file__).resolve().parents[2] / "configs" / "preprocess.yaml"


def _keys(obj, prefix=""):
    out = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out.add(prefix + f.name)
        if dataclasses.is_dataclass(value):
            out |= _keys(value, prefix + f.name + ".")
    return out


def _yaml_keys(node, prefix=""):
    out = set()
    for key, value in node.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _yaml_keys(value, prefix + key + ".")
    return out


class TestConfig:
    """Defaults load from the yaml into the dataclass; overrides are checked by __post_init__."""

    def test_yaml_mirrors_dataclass_fields(self):
        assert _yaml_keys(yaml.safe_load(YAML.read_text())) == _keys(PreprocessConfig())

    def test_yaml_defaults_equal_dataclass_defaults(self):
        assert load_config() == PreprocessConfig()

    @pytest.mark.parametrize(
        "override, key",
        [
            ("clip.length=0", "clip.length"),
            ("clip.stride=-2", "clip.stride"),
            ("conditions.image_size=[64]", "conditions.image_size"),
            ("conditions.max_boxes=300", "max_boxes"),
            ("compression.cname=gzip", "compression.cname"),
            ("ray.num_workers=0", "ray.num_workers"),
            ("cameras=[CAM_FRONT,CAM_FRONT]", "cameras"),
        ],
    )
    def test_bad_value_names_its_key(self, override, key):
        with pytest.raises(PreprocessConfigError, match=key.replace(".", r"\.")):
            load_config([override])
