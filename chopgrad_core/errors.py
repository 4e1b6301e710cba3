"""All errors raised by chopgrad_core, in one place.

Every error is rooted at ``ValueError`` (bad input) or ``TypeError`` (unsupported object), so callers
can catch broadly; not-found errors also subclass ``FileNotFoundError``. Messages name the input,
the value seen and the fix (the argument or config key to change).
"""

from __future__ import annotations


class ChopGradError(ValueError):
    """Base class for bad input to chopgrad_core."""


class ShapeError(ChopGradError):
    """A tensor has the wrong number of dimensions, channels or frames."""


class NonFiniteError(ChopGradError):
    """A tensor holds NaN or inf where finite values are required."""


class UnsupportedVAEError(TypeError):
    """``chopgrad_core.wrap`` was given a VAE family it has no adapter for."""


class WeightsNotFoundError(ChopGradError, FileNotFoundError):
    """A local weights file is missing. Nothing is ever downloaded: the message names the config key."""


class VideoError(ChopGradError):
    """A video file or frame folder cannot be read, is empty, or does not match its pair."""


class HeadConfigError(ChopGradError):
    """A setting of ``python -m chopgrad_core.heads.finetune`` / ``restore`` is invalid (names the key)."""


class CheckpointError(ChopGradError):
    """A checkpoint file is missing, truncated or not one this code wrote (names the file and the fix)."""


class OutputNotWritableError(ChopGradError, PermissionError):
    """An output folder cannot be written; raised before any work starts (names the config key)."""
