"""Configs: the dataclasses are the one source of truth, the YAML files under ``configs/`` the presets.

Each entry point registers its root dataclass with Hydra's ConfigStore (``register_schema``) and
names it first in its YAML's defaults list, so Hydra checks the preset and every command-line
override against the fields and their types (``trainer.steps=abc`` fails naming the key);
``to_dataclass`` then builds the dataclasses, running each ``__post_init__`` range check.
``tests/test_configs.py`` keeps the presets' keys and defaults equal to the dataclasses'.

``CONFIG_DIR`` is the ``configs`` folder shipped inside the package (a link to the repository's
``configs/`` in a source checkout, a real folder in an installed wheel), so every entry point
runs from any working directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from drivegen.errors import ConfigError, DrivegenError

__all__ = ["CONFIG_DIR", "cli", "compose", "register_schema", "to_dataclass"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

T = TypeVar("T")


def register_schema(name: str, node: type) -> None:
    """Register ``node`` as the schema ``name`` (used as ``defaults: [name, ...]`` in a preset)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node)


def to_dataclass(cls: type[T], cfg: Any) -> T:
    """A composed config (DictConfig or plain dict) as a checked ``cls``.

    Unknown keys and values of the wrong type fail with the key named; ``__post_init__`` checks
    raise the project's own errors (they name the key, the value and the fix)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{key}: {getattr(exc, 'msg', exc)} (see {cls.__name__}'s fields for the keys and "
                          "their types)") from None


def compose(cls: type[T], config_name: str, overrides: Any = (), schema: str | None = None) -> T:
    """``configs/<config_name>.yaml`` with Hydra-style ``key=value`` overrides, as a checked ``cls``
    (for code and tests that run outside ``@hydra.main``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    register_schema(schema or f"{config_name}_schema", cls)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as exc:  # an unknown key or a value of the wrong type: Hydra names the key
        cause = exc.__cause__ or exc
        raise ConfigError(f"{config_name}: {cause}") from None
    return to_dataclass(cls, cfg)


def cli(config_name: str, cls: type[T], body: Callable[[T], Optional[int]]) -> Callable[[], None]:
    """A stage's ``python -m`` entry point: Hydra composes ``configs/<config_name>.yaml`` (schema
    ``<config_name>_schema`` = ``cls``, so overrides are type-checked) into ``cls``; ``body(config)``
    runs and returns the exit status (None or 0: success). A DrivegenError (a wrong setting or
    input; its message names the key or file and the fix) prints ``error: ...`` without a traceback
    and exits 2.

        main = cli("evaluate", EvaluateConfig, lambda c: 1 if run(c)["totals"]["failed"] else 0)
        if __name__ == "__main__":
            main()
    """
    import hydra

    register_schema(f"{config_name}_schema", cls)

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def main(cfg: Any) -> None:
        try:
            status = body(to_dataclass(cls, cfg))
        except DrivegenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        if status:
            sys.exit(status)

    return main
