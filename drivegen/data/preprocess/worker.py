"""The preprocessing worker: a Ray actor that opens logs and writes their clips into the store.

Stateful (it keeps the last two logs it opened, so consecutive clips of a log do not reopen it);
its methods return plain dicts and never raise for a bad log (the reason goes in the result), so
one corrupt log cannot stop the run. Clip writes are idempotent: a task retried on a restarted
actor finds its clip already in the store and skips it.

What a log leaves out (the reader's `dropped`: unknown classes, labels without a 3D box, no map,
cameras without images, frames outside the annotated span) goes into the plan result (the log's
report row) and, counted over the clip's frames and cameras, into each clip's attrs, with the
boxes in view beyond `conditions.max_boxes`.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from drivegen.data import store
from drivegen.data.clips import render_clip_arrays, resize_image
from drivegen.data.ingest import open_log
from drivegen.data.preprocess.config import PreprocessConfig
from drivegen.errors import DrivegenError
from drivegen.workpool import reason

__all__ = ["ClipWorker"]


class ClipWorker:
    """A Ray actor that renders and writes clips. Stateful: it keeps the last logs it opened.

    Methods return plain dicts; they never raise for a bad log (the reason goes in the result),
    so one corrupt log cannot stop the run.
    """

    def __init__(self, out: str, config: PreprocessConfig, opener: Callable | None = None):
        import cv2
        import zarr

        # An actor is one CPU (num_cpus=1): OpenCV's threads and zarr's codec thread pool would
        # only compete with the other actors for the same cores.
        cv2.setNumThreads(1)
        zarr.config.set({"threading.max_workers": 1})
        if opener is None:  # the real readers: import their libraries while the actor starts
            from drivegen.data.ingest import warm_up

            warm_up()
        self._out = out
        self._config = config
        self._layout = config.conditions.layout_config()
        self._opener = opener or open_log
        self._readers: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def _reader(self, ref):
        key = (ref.kind, str(ref.path), ref.name)  # nuScenes scenes of one dataroot share a path
        if key in self._readers:
            self._readers.move_to_end(key)
            return self._readers[key]
        reader = self._opener(ref)
        self._readers[key] = reader
        while len(self._readers) > 2:  # a scene with its map can be large: keep two logs at most
            self._readers.popitem(last=False)
        return reader

    def _cameras(self, scene) -> tuple[str, ...]:
        if self._config.cameras is None:
            return scene.camera_names
        missing = [c for c in self._config.cameras if c not in scene.camera_names]
        if missing:
            raise DrivegenError(
                f"cameras {missing} (config key cameras) are not in this log; it has {list(scene.camera_names)}"
            )
        return tuple(self._config.cameras)

    def plan(self, ref) -> dict[str, Any]:
        """Open a log: its frame count, cameras and whether it has images (or why it failed)."""
        try:
            reader = self._reader(ref)
            scene = reader.scene
            dropped = getattr(reader, "dropped", None)  # None: a reader that does not count (a test double)
            return {
                "ok": True,
                "frames": len(scene.frames),
                "cameras": list(self._cameras(scene)),
                "has_images": bool(reader.has_images),
                "dataset": scene.source.dataset,
                "dropped": dropped.summary() if dropped is not None else None,
            }
        except Exception as exc:  # any failure to read a log is that log's, not the run's
            self._readers.pop((ref.kind, str(ref.path), ref.name), None)
            return {"ok": False, "reason": reason(exc), "traceback": traceback.format_exc(limit=4)}

    def write_clip(self, ref, start: int) -> dict[str, Any]:
        """Render and write the clip of `ref` starting at frame `start` (no-op if it exists)."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        cid = store.clip_id(ref.name, start)
        try:
            if store.has_clip(self._out, cid):  # a retried task whose clip already landed
                return {"status": "exists", "clip": cid, "seconds": 0.0}
            reader = self._reader(ref)
            t_open = time.perf_counter() - t0
            arrays, attrs = self._render_clip(ref, reader, start)
            written = store.write_clip(self._out, cid, arrays, attrs, dataclasses.asdict(self._config.compression))
            status = "written" if written else "exists"
            return {
                "status": status,
                "clip": cid,
                "boxes_over_max_boxes": attrs["dropped"]["boxes_over_max_boxes"] if attrs["dropped"] else 0,
                "seconds": time.perf_counter() - t0,
                "open_seconds": t_open,
                "cpu_seconds": time.process_time() - cpu0,  # all threads of the worker (zarr's too)
            }
        except Exception as exc:
            return {"status": "failed", "clip": cid, "reason": reason(exc), "traceback": traceback.format_exc(limit=4)}

    def _render_clip(self, ref, reader, start: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        scene = reader.scene
        cameras = self._cameras(scene)
        T, K = self._config.clip.length, len(cameras)
        H, W = self._layout.image_size
        frame_indices = list(range(start, start + T))
        # 1. Images, resized to the store's size (each axis on its own, as the intrinsics).
        has_images = bool(reader.has_images)
        arrays: dict[str, np.ndarray] = {}
        if has_images:
            images = np.empty((T, K, H, W, 3), dtype=np.uint8)
            for t, f in enumerate(frame_indices):
                for k, cam in enumerate(cameras):
                    image = np.asarray(reader.image(cam, f))
                    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                        raise DrivegenError(
                            f"image({cam!r}, {f}) has shape {image.shape} dtype {image.dtype}; expected (H, W, 3) uint8"
                        )
                    images[t, k] = resize_image(image, (H, W))
            arrays["images"] = images
        # 2. Conditions of every frame, stacked over time.
        conds, first = render_clip_arrays(scene, frame_indices, cameras, self._layout)
        arrays.update(conds)
        attrs = {
            "log": ref.name,
            "log_kind": ref.kind,
            # Absolute: a generation on a Ray cluster opens the log from another working folder.
            "log_path": str(Path(ref.path).resolve()),
            "log_version": getattr(ref, "version", None),
            "dataset": scene.source.dataset,
            "scene_id": scene.source.scene_id,
            "split": self._config.split.split_of(ref.name),
            "start_frame": start,
            "num_frames": T,
            "cameras": list(cameras),
            "has_images": has_images,
            "conditions_only": not has_images,
            "image_size": [H, W],
            "source_image_sizes": {c.name: list(c.image_size) for c in scene.cameras if c.name in cameras},
            "layout_channels": list(first.layout_channels),
            "bev_channels": list(first.bev_channels) if self._layout.bev is not None else [],
            "box_param_names": list(first.box_param_names),
        }
        # 3. What was left out, over this clip's frames and cameras (and the log's totals).
        dropped = getattr(reader, "dropped", None)
        if dropped is not None:
            clip_dropped = dropped.for_frames(frame_indices)
            clip_dropped["cameras_without_images"] = {c: n for c, n in clip_dropped["cameras_without_images"].items()
                                                      if c in cameras}
            clip_dropped["boxes_over_max_boxes"] = int(arrays["num_boxes_dropped"].sum())
            attrs.update(has_map=dropped.has_map, dropped=clip_dropped, log_dropped=dropped.summary())
        else:
            attrs.update(has_map=None, dropped=None, log_dropped=None)
        return arrays, attrs
