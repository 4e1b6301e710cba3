"""Ingest driving logs (nuScenes, Waymo Open Dataset v1) as `conditions.Scene` plus images.

    refs = discover_logs("datasets/sample")      # nuScenes scenes and Waymo segments under a folder
    log = open_log(refs[0])                      # LogError(log=..., reason=...) if unreadable
    log.scene                                    # conditions.Scene: every frame, every camera
    log.image("CAM_FRONT", 0)                    # (H, W, 3) uint8 RGB

Readers (`drivegen.data.ingest.nuscenes`, `drivegen.data.ingest.waymo`) map sources onto the conditions
conventions (world/ego x forward, y left, z up; camera x right, y down, z forward; boxes
(length, width, height), yaw about world z; microseconds) and the taxonomy of
`conditions.taxonomy`; labels without a class are counted in `scene.source.unmapped_classes`.
Each reader also exposes `track_keys[i]`, the source id (instance token, label id) of track id i,
and `dropped` (`Dropped`): everything it read but left out of the scene, counted per frame: labels
of classes outside the taxonomy, labels with no 3D box, a missing map, cameras without images,
frames outside the annotated span. Preprocessing reports these per log and per clip.

Frames of a nuScenes log are the CAM_FRONT images (12 Hz, keyframes and sweeps); the other
cameras contribute their nearest image. Waymo frames are the segment's records (10 Hz).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

import conditions
from drivegen.errors import LogError

__all__ = ["Dropped", "LogRef", "LogReader", "discover_logs", "open_log"]


@dataclass(frozen=True)
class LogRef:
    """Where one log lives."""

    kind: str
    """'nuscenes' or 'waymo'."""
    path: str
    """nuScenes: the dataroot (holding v1.0-*/ and maps/); Waymo: the .tfrecord file."""
    name: str
    """nuScenes: the scene name ('scene-0061'); Waymo: the segment (file stem)."""
    version: str | None = None
    """nuScenes version folder ('v1.0-mini'); None for Waymo."""


@dataclass(frozen=True)
class Dropped:
    """What a reader read but did not put into its scene, counted, so that nothing leaves silently.

    Per-frame fields are indexed like `scene.frames`, so a clip can count its own share
    (`for_frames`); `summary()` gives the log's totals. Both are plain JSON (report.json, clip attrs).
    """

    unmapped_classes: tuple[dict[str, int], ...]
    """Per frame: labels whose class is outside the box taxonomy, by source class name (not drawn).
    nuScenes annotations count at their keyframe's frame."""
    labels_without_box: tuple[int, ...]
    """Per frame: labels that have no 3D box (Waymo's camera-only 2D labels), hence no condition."""
    cameras_without_images: tuple[tuple[str, ...], ...]
    """Per frame: cameras with no image at that frame (a conditions-only log lists every camera)."""
    frames_outside_span: int = 0
    """Source frames left out of the scene: before the first or after the last annotated frame
    (their boxes could only be extrapolated)."""
    no_map: str | None = None
    """Why the log has no map (its map channels are empty), or None when it has one."""

    @classmethod
    def none(cls, num_frames: int) -> "Dropped":
        """Nothing dropped from a log of `num_frames` frames."""
        return cls(unmapped_classes=({},) * num_frames, labels_without_box=(0,) * num_frames,
                   cameras_without_images=((),) * num_frames)

    @property
    def has_map(self) -> bool:
        return self.no_map is None

    def for_frames(self, frames) -> dict:
        """Counts over the scene frames `frames` (a clip): unmapped_classes {name: labels},
        labels_without_box, cameras_without_images {camera: frames}, has_map, no_map."""
        frames = list(frames)
        unmapped: dict[str, int] = {}
        cameras: dict[str, int] = {}
        for f in frames:
            for name, n in self.unmapped_classes[f].items():
                unmapped[name] = unmapped.get(name, 0) + int(n)
            for cam in self.cameras_without_images[f]:
                cameras[cam] = cameras.get(cam, 0) + 1
        return {
            "unmapped_classes": dict(sorted(unmapped.items())),
            "labels_without_box": int(sum(self.labels_without_box[f] for f in frames)),
            "cameras_without_images": cameras,
            "has_map": self.has_map,
            "no_map": self.no_map,
        }

    def summary(self) -> dict:
        """The log's totals: `for_frames` over every frame, plus frames_outside_span."""
        return {**self.for_frames(range(len(self.unmapped_classes))), "frames_outside_span": self.frames_outside_span}


@runtime_checkable
class LogReader(Protocol):
    ref: LogRef
    scene: conditions.Scene
    """All frames, all cameras."""
    has_images: bool
    """False for a conditions-only log (e.g. a Waymo segment stripped of its camera images)."""
    dropped: Dropped
    """What the reader left out, counted (see Dropped)."""

    def image(self, camera: str, frame: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of `camera` at `frame`; raises LogError if it cannot be read."""
        ...


def discover_logs(root: str | Path) -> list[LogRef]:
    """Every nuScenes scene (dataroots holding v1.0-*/scene.json) and Waymo *.tfrecord under root.

    Sorted by (kind, path, name). Raises LogError if `root` is missing or a scene.json is unreadable.
    """
    root = Path(root)
    if not root.is_dir():
        raise LogError(str(root), f"log root {str(root)!r} is not a directory; pass the folder holding the logs "
                                  f"(e.g. datasets/sample, made by `python -m drivegen.data.sample_data`)")
    refs: list[LogRef] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        if here.name.startswith("v1.") and "scene.json" in filenames:
            scene_json = here / "scene.json"
            try:
                scenes = json.loads(scene_json.read_text())
                names = [s["name"] for s in scenes]
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise LogError(str(scene_json), f"{str(scene_json)!r} is not a nuScenes scene table ({exc}); "
                                                f"re-copy the {here.name} metadata") from None
            refs += [LogRef("nuscenes", str(here.parent), n, here.name) for n in names]
        refs += [LogRef("waymo", str(here / f), f[: -len(".tfrecord")]) for f in filenames if f.endswith(".tfrecord")]
    return sorted(refs, key=lambda r: (r.kind, r.path, r.name))


def warm_up() -> None:
    """Import the readers' heavy dependencies now (nuscenes-devkit and its map API pull in
    matplotlib, descartes, OpenCV; the Waymo protos pull in protobuf's descriptors): ~1 s of a
    core per process. A Ray worker calls this as it starts, so a worker that joins a log at the
    tail of a run pays only the log's own parsing (~0.3 s for the sample scene), not the imports."""
    import importlib

    for module in ("nuscenes.nuscenes", "nuscenes.map_expansion.map_api", "waymo_open_dataset.dataset_pb2"):
        try:
            importlib.import_module(module)
        except ImportError:  # a missing reader dependency surfaces, with its fix, when a log needs it
            pass


def open_log(ref: LogRef) -> LogReader:
    """A reader for `ref`; raises LogError(log=ref.name, reason=...) when the log cannot be read."""
    if ref.kind == "nuscenes":
        from drivegen.data.ingest.nuscenes import NuScenesReader

        return NuScenesReader(ref)
    if ref.kind == "waymo":
        from drivegen.data.ingest.waymo import WaymoReader

        return WaymoReader(ref)
    raise LogError(ref.name, f"LogRef.kind = {ref.kind!r} is not a known log kind; use 'nuscenes' or 'waymo'")
