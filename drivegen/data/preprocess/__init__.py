"""Preprocessing as a library: logs -> clips in a Zarr v3 store, on Ray actors.

``config`` (the settings), ``worker`` (the Ray actor that writes clips), ``driver`` (``run``: plan,
schedule, report). The ``python -m drivegen.preprocess`` stage is a thin CLI over ``run``; training
calls ``run`` too when its store is missing, without importing another stage.
"""

from drivegen.data.preprocess.config import (ClipConfig, CompressionConfig, ConditionsConfig, PreprocessConfig,
                                             RayConfig, SplitConfig, load_config)
from drivegen.data.preprocess.driver import format_summary, run
from drivegen.data.preprocess.worker import ClipWorker

__all__ = ["ClipConfig", "ClipWorker", "CompressionConfig", "ConditionsConfig", "PreprocessConfig", "RayConfig",
           "SplitConfig", "format_summary", "load_config", "run"]
