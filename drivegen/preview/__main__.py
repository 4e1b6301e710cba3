"""``python -m drivegen.preview``: see ``drivegen.preview``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from drivegen.config import CONFIG_DIR, register_schema, to_dataclass
from drivegen.errors import DrivegenError
from drivegen.preview import PreviewConfig, preview

register_schema("preview_schema", PreviewConfig)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="preview")
def main(cfg: DictConfig) -> None:
    try:
        out = preview(to_dataclass(PreviewConfig, cfg))
    except DrivegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(out)


if __name__ == "__main__":
    main()
