"""What `drivegen.preview` shows, read from any source: a log (nuScenes or Waymo), a store clip, or a
generated scenario's folder, all turned into one `PreviewClip` (the store's arrays, T leading).

Logs and generated folders are rendered with `drivegen.data.clips.render_clip_arrays`, the code
that writes the store, so what is previewed is what training sees. A generated folder is read as
files only (manifest.json, `<camera>.mp4`, the `nuscenes/` labels dataroot): the generation stage
is not imported.

Shape legend: T frames, K cameras, H W tile size, S box slots, C layout channels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conditions import LayoutConfig
from drivegen.data.clips import render_clip_arrays, resize_image
from drivegen.data.ingest import LogRef, discover_logs, open_log
from drivegen.errors import ConfigError, LogError, StoreError
from drivegen.preview.config import PreviewConfig

__all__ = ["PreviewClip", "load_source"]

MANIFEST = "manifest.json"  # a generated scenario's folder holds one (written last by drivegen.generate)


@dataclass
class PreviewClip:
    """T frames of K cameras: images (where there are any) and the conditions drawn over them."""

    name: str
    """Short name of what is shown (log, clip or scenario), used for the default output file."""
    source: str
    """Where it came from, in words ('nuScenes log ...', 'store clip ...', 'generated ...')."""
    cameras: tuple[str, ...]
    """Camera names as the source names them, in the source's order (axis K)."""
    arrays: dict[str, np.ndarray]
    """Store arrays (drivegen.data.store names): layout, control, box_*, cam_to_ego, bev (optional),
    timestamp_us, frame_index."""
    images: np.ndarray | None
    """(T, K, H, W, 3) uint8, or None when the source has no camera images (conditions only)."""
    notes: list[str] = field(default_factory=list)
    """What the source left out (no map, unknown classes, cameras without images...), for the caption."""


def load_source(cfg: PreviewConfig) -> PreviewClip:
    """The PreviewClip `cfg.source` names (see PreviewConfig.source for the kinds of source)."""
    path = Path(cfg.source)
    if not path.exists():
        raise ConfigError(f"source = {cfg.source!r} does not exist; pass a log folder, a nuScenes dataroot, a Waymo "
                          f".tfrecord, a clip store or a generated scenario folder")
    if path.is_dir() and (path / "zarr.json").is_file():
        if path.parent.name == "clips" and (path.parent.parent / "zarr.json").is_file():
            return _store_clip(path.parent.parent, path.name, cfg)
        return _store_clip(path, cfg.clip, cfg)
    if path.is_dir() and (path / MANIFEST).is_file() and (path / "nuscenes").is_dir():
        return _generated(path, cfg)
    refs = discover_logs(path) if path.is_dir() else [LogRef("waymo", str(path), path.stem)] \
        if path.suffix == ".tfrecord" else []
    if not refs:
        raise ConfigError(f"source = {cfg.source!r} holds no nuScenes scene, Waymo segment, clip store or generated "
                          f"scenario (manifest.json)")
    if cfg.log is not None:
        found = [r for r in refs if r.name == cfg.log]
        if not found:
            raise ConfigError(f"log = {cfg.log!r} is not in {cfg.source!r}; it holds {[r.name for r in refs]}")
        refs = found
    return _log(refs[0], cfg)


def _frames(first: int, count: int, total: int, what: str) -> list[int]:
    if first >= total:
        raise ConfigError(f"frame = {first} is past the end of {what} ({total} frames); pass frame=0..{total - 1}")
    last = total if count == 0 else min(total, first + count)
    return list(range(first, last))


def _notes(dropped: Any, cameras) -> list[str]:
    if dropped is None:
        return []
    d = dropped if isinstance(dropped, dict) else dropped.summary()
    notes = []
    if not d.get("has_map", True):
        notes.append("no map")
    if d.get("unmapped_classes"):
        notes.append("not drawn: " + ", ".join(f"{k} x{v}" for k, v in d["unmapped_classes"].items()))
    if d.get("labels_without_box"):
        notes.append(f"{d['labels_without_box']} labels without 3D box")
    missing = {c: n for c, n in (d.get("cameras_without_images") or {}).items() if c in cameras}
    if missing:
        notes.append("no images: " + ", ".join(missing))
    if d.get("frames_outside_span"):
        notes.append(f"{d['frames_outside_span']} frames outside the annotated span")
    return notes


def _render(scene, frames: list[int], cameras, size_hw) -> dict[str, np.ndarray]:
    arrays, _ = render_clip_arrays(scene, frames, list(cameras), LayoutConfig(image_size=tuple(size_hw)))
    return arrays


def _log(ref: LogRef, cfg: PreviewConfig) -> PreviewClip:
    reader = open_log(ref)
    scene = reader.scene
    frames = _frames(cfg.frame, cfg.num_frames, len(scene.frames), f"log {ref.name!r}")
    cameras = scene.camera_names
    H, W = cfg.image_size
    arrays = _render(scene, frames, cameras, (H, W))
    images, notes = None, _notes(getattr(reader, "dropped", None), cameras)
    if reader.has_images:
        images = np.zeros((len(frames), len(cameras), H, W, 3), np.uint8)
        for t, f in enumerate(frames):
            for k, cam in enumerate(cameras):
                try:
                    images[t, k] = resize_image(reader.image(cam, f), (H, W))
                except LogError as exc:  # shown black, and said in the caption
                    notes.append(f"{cam} frame {f}: {exc.reason[:60]}")
    kind = "nuScenes" if ref.kind == "nuscenes" else "Waymo"
    return PreviewClip(name=ref.name, source=f"{kind} log {ref.name}", cameras=cameras, arrays=arrays,
                       images=images, notes=notes)


def _store_clip(store: Path, clip: str | None, cfg: PreviewConfig) -> PreviewClip:
    from drivegen.data.store import CLIPS, open_root

    root = open_root(str(store))
    names = sorted(name for name, _ in root[CLIPS].groups())
    if not names:
        raise StoreError(f"the store {str(store)!r} has no clips; run python -m drivegen.preprocess out={store}")
    clip = clip or names[0]
    if clip not in names:
        raise ConfigError(f"clip = {clip!r} is not in {str(store)!r}; it has {names[:8]}{' ...' if len(names) > 8 else ''}")
    group = root[f"{CLIPS}/{clip}"]
    attrs = dict(group.attrs)
    frames = _frames(cfg.frame, cfg.num_frames, int(attrs["num_frames"]), f"clip {clip!r}")
    sl = slice(frames[0], frames[-1] + 1)
    arrays = {name: np.asarray(group[name][sl]) for name in ("layout", "control", "box_corners", "box_corner_mask",
                                                             "box_mask", "box_class", "cam_to_ego", "timestamp_us",
                                                             "frame_index")}
    if "bev" in group:
        arrays["bev"] = np.asarray(group["bev"][sl])
    images = np.asarray(group["images"][sl]) if "images" in group else None
    cameras = tuple(attrs["cameras"])
    return PreviewClip(name=clip, source=f"store clip {clip} ({attrs.get('log_kind', '?')} log {attrs.get('log')})",
                       cameras=cameras, arrays=arrays, images=images,
                       notes=_notes(attrs.get("log_dropped"), cameras))


def _generated(folder: Path, cfg: PreviewConfig) -> PreviewClip:
    from chopgrad_core.video import read_video

    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        name, cameras = manifest["scenario"], tuple(manifest["cameras"])
        version = manifest["config"]["labels"]["version"]
        size = tuple(manifest["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{str(folder / MANIFEST)!r} is not a drivegen.generate manifest ({type(exc).__name__}: "
                          f"{exc}); regenerate the scenario") from None
    reader = open_log(LogRef("nuscenes", str(folder / "nuscenes"), name, version))
    scene = reader.scene
    frames = _frames(cfg.frame, cfg.num_frames, len(scene.frames), f"generated scenario {name!r}")
    arrays = _render(scene, frames, cameras, size)
    images = np.zeros((len(frames), len(cameras), *size, 3), np.uint8)
    for k, cam in enumerate(cameras):
        video = read_video(folder / f"{cam}.mp4")  # (F, H, W, 3): the generated frames
        images[:, k] = np.stack([resize_image(video[f], size) for f in frames])
    dropped = getattr(reader, "dropped", None)
    if dropped is not None:  # the images are the videos: the dataroot's own JPEGs are not needed
        dropped = {k: v for k, v in dropped.summary().items() if k != "cameras_without_images"}
    return PreviewClip(name=name, source=f"generated scenario {name} (labels: nuscenes/)", cameras=cameras,
                       arrays=arrays, images=images, notes=_notes(dropped, cameras))
