"""Configuration of ``python -m drivegen.generate``; ``configs/generate.yaml`` mirrors it 1:1."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from drivegen.errors import GenerateConfigError
from drivegen.generate.scenario import ValidationConfig
from drivegen.workpool import RayConfig


@dataclass(kw_only=True)
class SamplerConfig:
    steps: int = 20
    """Euler steps of the flow-matching scheduler (diffusers FlowMatchEulerDiscreteScheduler)."""
    shift: float = 3.0
    """Wan's sigma shift."""
    guidance: float = 1.0
    """Guidance on the controls: v_null + g (v_cond - v_null), null = no layout and no boxes.
    1 disables it (one model call per step). Training learns the null condition through
    objective.control_dropout > 0 (0 by default); guidance on a model trained without it is refused."""
    seed: int = 0
    """Noise seed (a scenario's own ``seed`` wins): the same seed gives the same video."""
    chunk_frames: Optional[int] = None
    """Frames generated per chunk (1 + 4k); null: the checkpoint's training clip length."""
    overlap: int = 1
    """Latent frames each chunk shares with (continues from) the previous one; < the chunk's latent frames."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise GenerateConfigError(f"sampler.steps={self.steps} must be >= 1")
        if self.guidance <= 0:
            raise GenerateConfigError(f"sampler.guidance={self.guidance} must be > 0 (1 disables guidance)")
        if self.chunk_frames is not None and (self.chunk_frames < 5 or (self.chunk_frames - 1) % 4):
            raise GenerateConfigError(f"sampler.chunk_frames={self.chunk_frames} must be 1 + 4k >= 5, or null")
        if self.overlap < 0:
            raise GenerateConfigError(f"sampler.overlap={self.overlap} must be >= 0")


@dataclass(kw_only=True)
class VideoConfig:
    fps: Optional[int] = None
    """Frames per second of the mp4s; null: the log's frame rate."""
    controls: bool = True
    """Put the control images beside the generated ones in mosaic.mp4."""


@dataclass(kw_only=True)
class LabelsConfig:
    version: str = "v1.0-drivegen-generated"
    """nuScenes version folder of the generated dataroot."""
    location: str = "boston-seaport"
    """Log location written (nuscenes-devkit's NuScenesMap accepts only its four names)."""
    keyframe_every: int = 1
    """Frames between keyframes (annotated samples); 1 annotates every generated frame."""
    jpeg_quality: int = 95
    """Quality of the generated frames written as the dataroot's camera images."""

    def __post_init__(self) -> None:
        from drivegen.data.nuscenes_format import NUSCENES_LOCATIONS

        if self.location not in NUSCENES_LOCATIONS:
            raise GenerateConfigError(f"labels.location={self.location!r}: choose one of {list(NUSCENES_LOCATIONS)}")
        if self.keyframe_every < 1:
            raise GenerateConfigError(f"labels.keyframe_every={self.keyframe_every} must be >= 1")


@dataclass(kw_only=True)
class GenerateConfig:
    checkpoint: str = "outputs/train"
    """A training run folder (its newest checkpoint) or one checkpoint-<step>/ folder, written by python -m drivegen.train."""
    scenarios: list[str] = field(default_factory=lambda: ["sample_edit.yaml"])
    """Scenario files (YAML/JSON), as paths or names of the scenarios shipped in drivegen/generate/scenarios/;
    each is generated into out/<scenario name>/."""
    out: str = "outputs/generate"
    """Output root; report.json of the last run lands here."""
    length: Optional[int] = None
    """Generated frames (1 + 4k) for scenarios without their own ``frames``; null: the training clip length."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    ema: bool = True
    """Use the checkpoint's EMA weights when it has them."""
    mode: str = "auto"
    """local (one after another in this process), ray (Ray actors), or auto (ray for more than one scenario to do)."""
    progress: bool = True
    """Progress bar over scenarios and the summary table."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.length is not None and (self.length < 1 or (self.length - 1) % 4):
            raise GenerateConfigError(f"length={self.length} must be 1 + 4k (5, 9, 13, ...) or null")
        if self.mode not in ("local", "ray", "auto"):
            raise GenerateConfigError(f"mode={self.mode!r}: choose local, ray or auto")
        if not self.scenarios:
            raise GenerateConfigError("scenarios=[]: list at least one scenario file")

    def output_settings(self) -> dict:
        """The settings a finished scenario's outputs depend on (with the scenario and checkpoint)."""
        d = asdict(self)
        return {k: d[k] for k in ("length", "ema", "sampler", "validation", "video", "labels")}
