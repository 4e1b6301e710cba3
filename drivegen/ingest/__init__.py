"""Ingest driving logs (nuScenes, Waymo Open Dataset v1) as `conditions.Scene` plus images.

    refs = discover_logs("datasets/sample")      # nuScenes scenes and Waymo segments under a folder
    log = open_log(refs[0])                      # LogError(log=..., reason=...) if unreadable
    log.scene                                    # conditions.Scene: every frame, every camera
    log.image("CAM_FRONT", 0)                    # (H, W, 3) uint8 RGB

Readers (`drivegen.ingest.nuscenes`, `drivegen.ingest.waymo`) map sources onto the conditions
conventions (world/ego x forward, y left, z up; camera x right, y down, z forward; boxes
(length, width, height), yaw about world z; microseconds) and the taxonomy of
`conditions.taxonomy`; labels without a class are counted in `scene.source.unmapped_classes`.
Each reader also exposes `track_keys[i]`, the source id (instance token, label id) of track id i.

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

__all__ = ["LogRef", "LogReader", "discover_logs", "open_log"]


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


@runtime_checkable
class LogReader(Protocol):
    ref: LogRef
    scene: conditions.Scene
    """All frames, all cameras."""
    has_images: bool
    """False for a conditions-only log (e.g. a Waymo segment stripped of its camera images)."""

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
                                  f"(e.g. datasets/sample, made by `python -m drivegen.sample_data`)")
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
        from drivegen.ingest.nuscenes import NuScenesReader

        return NuScenesReader(ref)
    if ref.kind == "waymo":
        from drivegen.ingest.waymo import WaymoReader

        return WaymoReader(ref)
    raise LogError(ref.name, f"LogRef.kind = {ref.kind!r} is not a known log kind; use 'nuscenes' or 'waymo'")
