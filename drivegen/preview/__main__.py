"""``python -m drivegen.preview``: see ``drivegen.preview``."""

from __future__ import annotations

from drivegen.config import cli
from drivegen.preview import PreviewConfig, preview

main = cli("preview", PreviewConfig, lambda config: print(preview(config)))

if __name__ == "__main__":
    main()
