"""Every error that `conditions/` raises, in one place.

All of them derive from `ConditionsError`, itself a `ValueError`, so a caller can catch the whole
family with `except ValueError`. Each message names the input (dataclass and field, with the index
of the offending element when there is one), shows its value, and says how to fix it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ConditionsError",
    "InvalidBoxError",
    "InvalidCameraError",
    "InvalidPoseError",
    "InvalidMapError",
    "InvalidSceneError",
    "UnknownClassError",
    "UnknownCameraError",
    "FrameIndexError",
    "InvalidConfigError",
]


def show(value: object, max_chars: int = 160) -> str:
    """repr() of `value` short enough for an error message (arrays printed compactly)."""
    if isinstance(value, np.ndarray):
        text = np.array2string(value, precision=4, separator=", ", threshold=24, max_line_width=10**6)
        text = " ".join(text.split())  # one line, so that messages grep and match
        text = f"array(shape={value.shape}, dtype={value.dtype}, values={text})"
    else:
        text = repr(value)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


class ConditionsError(ValueError):
    """Root of every error raised by `conditions/`."""


class InvalidBoxError(ConditionsError):
    """An agent box parameter is non-finite, has the wrong shape or a non-positive size."""


class InvalidCameraError(ConditionsError):
    """Camera intrinsics, extrinsics, image size or distortion are malformed."""


class InvalidPoseError(ConditionsError):
    """An ego pose is not a finite rigid 4x4 transform, or timestamps go backwards."""


class InvalidMapError(ConditionsError):
    """A map element has an unknown class, too few points or non-finite coordinates."""


class InvalidSceneError(ConditionsError):
    """The scene as a whole is inconsistent (e.g. duplicate camera names)."""


class UnknownClassError(ConditionsError):
    """A class name is not in the taxonomy (`conditions.taxonomy`)."""


class UnknownCameraError(ConditionsError):
    """A requested camera name is not one of the scene's cameras."""


class FrameIndexError(ConditionsError, IndexError):
    """A frame index is outside the scene's frames (also an IndexError)."""


class InvalidConfigError(ConditionsError):
    """A `LayoutConfig` / `BevConfig` field is out of range."""
