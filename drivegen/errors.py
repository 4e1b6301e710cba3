"""Every error drivegen raises, in one place.

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


class ConfigError(DrivegenError):
    """A setting of an entry point is invalid (the message names the key, the value and the fix)."""


class StoreError(DrivegenError):
    """A clip store could not be read or written (the message names the path and the fix)."""


class CheckpointError(DrivegenError, FileNotFoundError):
    """A training checkpoint is missing, incomplete or corrupt (the message names the folder and the fix)."""


class TrainConfigError(ConfigError):
    """A ``python -m drivegen.train`` setting is invalid; the message names the key."""


class PreprocessConfigError(ConfigError):
    """A `drivegen.data.preprocess.PreprocessConfig` field is out of range (the message names the key)."""


class DatasetConfigError(ConfigError):
    """A `drivegen.data.dataset.ClipDataset` argument does not fit the store (the message lists what it holds)."""


class ScenarioError(DrivegenError):
    """A generation scenario is invalid: names the scenario, the agent and the field.

    Attributes:
        scenario: scenario name (or file).
        agent: the agent the problem is about ('ego', a source track id, an inserted agent's id), or None.
        field: the scenario field, e.g. ``insert[0].waypoints[2].t``.
        reason: what is wrong and how to fix it.
    """

    def __init__(self, scenario: str, agent: str | None, field: str, reason: str):
        self.scenario, self.agent, self.field, self.reason = scenario, agent, field, reason
        who = f"agent {agent!r}, " if agent is not None else ""
        super().__init__(f"scenario {scenario!r}: {who}field {field}: {reason}")


class GenerateConfigError(ConfigError):
    """A `drivegen.generate` setting is invalid or does not fit the checkpoint (the message names the key)."""


class EvaluateConfigError(ConfigError):
    """A `drivegen.evaluate` setting is invalid or does not fit the checkpoint (the message names the key)."""


class WeightsFileError(EvaluateConfigError, FileNotFoundError):
    """A local weights file named in a config (FID / FVD / LPIPS features) is missing or not loadable;
    nothing is downloaded: the message names the key and the file."""


class ProbeError(DrivegenError, FileNotFoundError):
    """The layout probe is missing, damaged or does not fit the frames it is given (names the file and the fix)."""
