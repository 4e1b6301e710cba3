"""PreprocessConfig: a bad value fails at load time with a message naming the key to set (the
YAML mirror itself is tests/test_configs.py)."""

from __future__ import annotations

import pytest

from drivegen.data.preprocess import PreprocessConfig, load_config
from drivegen.errors import ConfigError

class TestConfig:
    """Defaults load from the yaml into the dataclass; overrides are checked by __post_init__."""

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
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config([override])
