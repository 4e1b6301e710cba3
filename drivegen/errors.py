"""Error types shared across drivegen.

Every error is a ``ValueError`` subclass (via ``DrivegenError``) so callers that
already catch bad-input ``ValueError`` keep working; messages name the input
and say how to fix it.
"""

from __future__ import annotations


class DrivegenError(ValueError):
    """Base class for all drivegen errors."""


class LogError(DrivegenError):
    """A driving log (nuScenes scene, Waymo segment) could not be read.

    Attributes:
        log: name of the log (scene name, segment name or file path).
        reason: human-readable cause and, where possible, the fix.
    """

    def __init__(self, log: str, reason: str):
        self.log = log
        self.reason = reason
        super().__init__(f"log {log!r}: {reason}")


class StoreError(DrivegenError):
    """A dataset store / cache could not be read or written."""


class PreprocessConfigError(DrivegenError):
    """A `drivegen.preprocess.PreprocessConfig` field is out of range (the message names the key)."""


class DatasetConfigError(DrivegenError):
    """A `drivegen.dataset.ClipDataset` argument does not fit the store (the message lists what it holds)."""
