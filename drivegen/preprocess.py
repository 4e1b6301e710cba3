"""Preprocessing: driving logs -> fixed-length multi-camera clips in a Zarr v3 store.

    python -m drivegen.preprocess                                   # datasets/sample -> datasets/clips.zarr
    python -m drivegen.preprocess input_root=/data/nuscenes out=/data/clips.zarr clip.length=16
    python -m drivegen.preprocess ray.address=auto                  # join a running Ray cluster

Steps (`run`):
1. Discover the logs under `input_root` (`drivegen.ingest.discover_logs`) and create the store,
   or check that an existing one was written with the same settings.
2. Start Ray (embedded local instance unless `ray.address` or RAY_ADDRESS names a cluster) and
   `ray.num_workers` `ClipWorker` actors. Actors restart when their process dies
   (`ray.max_restarts`) and Ray retries the task they were running (`ray.max_task_retries`): clip
   writes are idempotent (`drivegen.store.write_clip`), so a retry never duplicates or loses a clip.
3. Plan and write: a worker opens a log (a log that cannot be read is recorded with its reason)
   and then writes its clips that are not yet in the store: it renders the conditions of their
   frames (`conditions.render_frame`), resizes the images and writes each clip atomically. It
   stays on that log while clips are left, then opens the next unopened log; only at the end do
   idle workers join logs still being written. A log whose reading fails midway stops there;
   its finished clips stay.
4. Record: consolidate the store's metadata, write report.json, print a summary table.

Clips: frames [s, s + clip.length) for s = 0, clip.stride, ... while the clip fits in the log.
A log without camera images (a Waymo segment with labels only) gives conditions-only clips: no
`images` array and attrs["has_images"] = False.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np

from conditions import BevConfig, LayoutConfig, render_frame
from drivegen import store
from drivegen.errors import DrivegenError, PreprocessConfigError

__all__ = [
    "ClipConfig",
    "CompressionConfig",
    "ConditionsConfig",
    "PreprocessConfig",
    "PreprocessConfigError",
    "RayConfig",
    "ClipWorker",
    "clip_starts",
    "render_clip_arrays",
    "format_summary",
    "load_config",
    "run",
]


# ---------------------------------------------------------------------------------------------
# Config (mirrored 1:1 by configs/preprocess.yaml)
# ---------------------------------------------------------------------------------------------


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


@dataclass(kw_only=True)
class ClipConfig:
    """How logs are cut into clips."""

    length: int = 8
    """Frames per clip (T). A log shorter than this gives no clip (reported as too_short)."""
    stride: int = 8
    """Frames between the starts of consecutive clips; < length makes clips overlap."""

    def __post_init__(self) -> None:
        for name in ("length", "stride"):
            if not _positive_int(getattr(self, name)):
                raise PreprocessConfigError(f"clip.{name} = {getattr(self, name)!r}; expected a positive int")


@dataclass(kw_only=True)
class ConditionsConfig:
    """What `conditions.render_frame` renders (fields of conditions.LayoutConfig / BevConfig)."""

    image_size: List[int] = field(default_factory=lambda: [256, 448])
    """(height, width) of images and every per-camera condition in the store."""
    max_boxes: int = 64
    """Box token slots per camera (S)."""
    near_m: float = 0.1
    """Near clipping plane, metres."""
    depth_max_m: float = 80.0
    """Depth that maps to the darkest layout depth value, metres."""
    map_range_m: float = 80.0
    """Map geometry is drawn up to this far from each camera, metres."""
    line_width_px: int = 2
    """Stroke width of map lines in the camera rasters."""
    control_outline: bool = True
    """Darken box face outlines in the control image."""
    ray_stride: int = 8
    """One Plücker ray per ray_stride x ray_stride pixels."""
    bev: bool = True
    """Store the bird's-eye-view raster (false: no `bev` array)."""
    bev_size_px: List[int] = field(default_factory=lambda: [200, 200])
    """(height, width) of the BEV raster."""
    bev_metres_per_px: float = 0.5
    """BEV ground resolution."""

    def __post_init__(self) -> None:
        if len(self.image_size) != 2 or not all(_positive_int(s) for s in self.image_size):
            raise PreprocessConfigError(
                f"conditions.image_size = {list(self.image_size)!r}; expected [height, width] positive ints"
            )
        try:
            self.layout_config()
        except ValueError as exc:  # LayoutConfig / BevConfig say which of their fields is wrong
            raise PreprocessConfigError(f"conditions: {exc} (set the key of the same name under conditions.)") from None

    def layout_config(self) -> LayoutConfig:
        bev = None
        if self.bev:
            bev = BevConfig(size_px=tuple(self.bev_size_px), metres_per_px=float(self.bev_metres_per_px))
        return LayoutConfig(
            image_size=tuple(int(s) for s in self.image_size),
            max_boxes=self.max_boxes,
            near_m=float(self.near_m),
            depth_max_m=float(self.depth_max_m),
            map_range_m=float(self.map_range_m),
            line_width_px=self.line_width_px,
            control_outline=self.control_outline,
            ray_stride=self.ray_stride,
            bev=bev,
        )


@dataclass(kw_only=True)
class CompressionConfig:
    """Blosc compression of every stored array."""

    cname: str = "zstd"
    """Blosc compressor: zstd (smallest), lz4 (fastest), blosclz, lz4hc, zlib."""
    level: int = 1
    """Compression level 0..9; 1 is the fastest zstd level and already ~100x on layouts."""
    bitshuffle: bool = True
    """Bit-shuffle before compressing (0/1 layout channels shrink far more)."""

    def __post_init__(self) -> None:
        names = ("zstd", "lz4", "blosclz", "lz4hc", "zlib")
        if self.cname not in names:
            raise PreprocessConfigError(f"compression.cname = {self.cname!r}; expected one of {list(names)}")
        if not (isinstance(self.level, int) and 0 <= self.level <= 9):
            raise PreprocessConfigError(f"compression.level = {self.level!r}; expected an int in 0..9")


@dataclass(kw_only=True)
class RayConfig:
    """Where the workers run and how they recover."""

    address: Optional[str] = None
    """None: RAY_ADDRESS if set, else an embedded local instance; 'auto' or 'ray://...' joins a cluster."""
    num_workers: int = 2
    """ClipWorker actors (one CPU each)."""
    num_cpus: Optional[int] = None
    """CPUs of the embedded local instance (None: all); ignored when joining a cluster."""
    max_restarts: int = 3
    """Times an actor is restarted after its process dies (-1: forever)."""
    max_task_retries: int = 3
    """Times a task is retried on a restarted actor (-1: forever); writes are idempotent."""

    def __post_init__(self) -> None:
        if not _positive_int(self.num_workers):
            raise PreprocessConfigError(f"ray.num_workers = {self.num_workers!r}; expected a positive int")
        if self.num_cpus is not None and not _positive_int(self.num_cpus):
            raise PreprocessConfigError(f"ray.num_cpus = {self.num_cpus!r}; expected a positive int or null")
        for name in ("max_restarts", "max_task_retries"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= -1):
                raise PreprocessConfigError(f"ray.{name} = {getattr(self, name)!r}; expected an int >= -1")


@dataclass(kw_only=True)
class PreprocessConfig:
    """`python -m drivegen.preprocess`: which logs, which store, which clips, where to run."""

    input_root: str = "datasets/sample"
    """Directory searched for logs (drivegen.ingest.discover_logs): nuScenes roots, Waymo TFRecords."""
    out: str = "datasets/clips.zarr"
    """The Zarr v3 store; rerunning into it adds only the missing clips."""
    cameras: Optional[List[str]] = None
    """Cameras to store, in this order; null: every camera of each log (a log lacking one fails)."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    conditions: ConditionsConfig = field(default_factory=ConditionsConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    progress: bool = True
    """Show tqdm progress bars (logs, clips)."""

    def __post_init__(self) -> None:
        if not self.out:
            raise PreprocessConfigError("out = ''; set out= to the path of the Zarr store")
        if self.cameras is not None:
            cams = list(self.cameras)
            if not cams or not all(isinstance(c, str) and c for c in cams) or len(set(cams)) != len(cams):
                raise PreprocessConfigError(f"cameras = {cams!r}; expected distinct camera names, or null for all")

    def store_settings(self) -> dict[str, Any]:
        """What every clip of a store must agree on (checked when rerunning into a store)."""
        return {
            "clip": dataclasses.asdict(self.clip),
            "conditions": dataclasses.asdict(self.conditions),
            "cameras": None if self.cameras is None else list(self.cameras),
        }


def load_config(overrides: Optional[List[str]] = None) -> PreprocessConfig:
    """configs/preprocess.yaml with Hydra-style `key=value` overrides, as a checked dataclass."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(_CONFIG_DIR)):
        return _to_dataclass(compose(config_name="preprocess", overrides=list(overrides or [])))


_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _to_dataclass(cfg: Any) -> PreprocessConfig:
    from omegaconf import OmegaConf

    # Merging into the structured schema rejects unknown keys and wrong types; to_object then
    # builds the dataclasses, so every __post_init__ check runs.
    merged = OmegaConf.merge(OmegaConf.structured(PreprocessConfig), cfg)
    return OmegaConf.to_object(merged)


# ---------------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------------


def clip_starts(num_frames: int, length: int, stride: int) -> list[int]:
    """First frames of the clips of a log of `num_frames` frames."""
    return list(range(0, num_frames - length + 1, stride)) if num_frames >= length else []


def _default_opener(ref):
    from drivegen.ingest import open_log

    return open_log(ref)


def _resize(image_HW3: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    import cv2

    H, W = size_hw
    if image_HW3.shape[:2] == (H, W):
        return image_HW3
    # INTER_AREA when shrinking (no aliasing), linear when enlarging. Each axis is scaled on its
    # own, as conditions rescales the intrinsics: a different aspect ratio stretches, never crops.
    shrink = image_HW3.shape[0] >= H and image_HW3.shape[1] >= W
    return cv2.resize(image_HW3, (W, H), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # drivegen.errors.LogError carries its own
    text = reason if isinstance(reason, str) else str(exc)
    return f"{type(exc).__name__}: {text}"


def render_clip_arrays(scene, frame_indices: list[int], cameras, layout: LayoutConfig):
    """The condition arrays of a clip (store.ARRAYS names, T leading) and the first frame's
    FrameConditions (channel names): `conditions.render_frame` per frame, stacked over time.
    Shared by the store writer and by generation (edited scenes are rendered the same way)."""
    # render_frame stacks cameras on axis K.
    outs = [render_frame(scene, f, cameras=cameras, config=layout) for f in frame_indices]
    stack = lambda name: np.stack([getattr(o, name) for o in outs])  # noqa: E731
    arrays = dict(
        layout=stack("layout_KCHW"),
        control=stack("control_KHW3"),
        box_corners=stack("box_corners_KS82"),
        box_corner_mask=stack("box_corner_mask_KS8"),
        box_params=stack("box_params_KSP"),
        box_class=stack("box_class_KS"),
        box_track=stack("box_track_KS"),
        box_mask=stack("box_mask_KS"),
        box_visible_px=stack("box_visible_px_KS"),
        num_boxes_dropped=stack("num_boxes_dropped_K"),
        intrinsics=stack("intrinsics_K33"),
        cam_to_ego=stack("cam_to_ego_K44"),
        plucker=stack("plucker_K6hw"),
        ego_to_world=stack("ego_to_world_44").astype(np.float64),
        timestamp_us=np.array([o.timestamp_us for o in outs], dtype=np.int64),
        frame_index=np.array(frame_indices, dtype=np.int64),
    )
    if layout.bev is not None:
        arrays["bev"] = stack("bev_CHW")
    return arrays, outs[0]


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
            from drivegen.ingest import warm_up

            warm_up()
        self._out = out
        self._config = config
        self._layout = config.conditions.layout_config()
        self._opener = opener or _default_opener
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
            return {
                "ok": True,
                "frames": len(scene.frames),
                "cameras": list(self._cameras(scene)),
                "has_images": bool(reader.has_images),
                "dataset": scene.source.dataset,
            }
        except Exception as exc:  # any failure to read a log is that log's, not the run's
            self._readers.pop((ref.kind, str(ref.path), ref.name), None)
            return {"ok": False, "reason": _reason(exc), "traceback": traceback.format_exc(limit=4)}

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
                "seconds": time.perf_counter() - t0,
                "open_seconds": t_open,
                "cpu_seconds": time.process_time() - cpu0,  # all threads of the worker (zarr's too)
            }
        except Exception as exc:
            return {"status": "failed", "clip": cid, "reason": _reason(exc), "traceback": traceback.format_exc(limit=4)}

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
                    images[t, k] = _resize(image, (H, W))
            arrays["images"] = images
        # 2. Conditions of every frame, stacked over time.
        conds, first = render_clip_arrays(scene, frame_indices, cameras, self._layout)
        arrays.update(conds)
        attrs = {
            "log": ref.name,
            "log_kind": ref.kind,
            "log_path": str(ref.path),
            "log_version": getattr(ref, "version", None),
            "dataset": scene.source.dataset,
            "scene_id": scene.source.scene_id,
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
        return arrays, attrs


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _init_ray(config: RayConfig):
    import ray

    if ray.is_initialized():  # tests and notebooks start Ray themselves
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    else:
        kwargs["address"] = "local"
        if config.num_cpus is not None:
            kwargs["num_cpus"] = config.num_cpus
    ray.init(**kwargs)
    return ray


@dataclass(kw_only=True)
class _LogState:
    ref: Any
    status: str = "pending"
    frames: int = 0
    cameras: list[str] = field(default_factory=list)
    has_images: bool = True
    clips_total: int = 0
    clips_written: int = 0
    clips_skipped: int = 0
    reason: Optional[str] = None

    def row(self) -> dict[str, Any]:
        return {
            "log": self.ref.name,
            "kind": self.ref.kind,
            "path": str(self.ref.path),
            "status": self.status,
            "frames": self.frames,
            "cameras": self.cameras,
            "has_images": self.has_images,
            "clips_total": self.clips_total,
            "clips_written": self.clips_written,
            "clips_skipped": self.clips_skipped,
            "reason": self.reason,
        }


def run(config: PreprocessConfig, refs: Optional[list] = None, opener: Callable | None = None) -> dict[str, Any]:
    """Preprocess `refs` (default: every log under config.input_root) into config.out.

    `opener(ref) -> LogReader` replaces drivegen.ingest.open_log (tests wrap it to inject
    faults); it must be picklable, since every worker calls it. Returns the report (also written
    to <out>/report.json).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    out = str(Path(config.out).resolve())
    # 1. Logs and store.
    if refs is None:
        from drivegen.ingest import discover_logs

        if not Path(config.input_root).is_dir():
            raise PreprocessConfigError(
                f"input_root = {config.input_root!r} is not a directory; point input_root= at your logs "
                f"(python -m drivegen.sample_data --out datasets/sample writes sample ones)"
            )
        refs = list(discover_logs(config.input_root))
    logs = {ref.name: _LogState(ref=ref) for ref in refs}
    if len(logs) != len(refs):
        raise PreprocessConfigError(f"two logs share a name in {[r.name for r in refs]}; clip ids would collide")
    store.open_store(out, config.store_settings())
    store.remove_partial(out)  # leftovers of a crashed run (one run per store at a time)
    done = store.completed_clips(out)

    # 2. Ray and the workers.
    ray = _init_ray(config.ray)
    worker_cls = ray.remote(num_cpus=1)(ClipWorker)
    workers = [
        worker_cls.options(max_restarts=config.ray.max_restarts, max_task_retries=config.ray.max_task_retries).remote(
            out, config, opener
        )
        for _ in range(config.ray.num_workers)
    ]
    try:
        # 3. Plan and write in one loop. A worker plans a log (opens it, counts its clips), then
        # writes that log's clips while some are left, two in flight so that it never waits for
        # the driver; then it plans the next unopened log. Only when none is left does it join
        # the fullest log still being written (which it must open too). So a log is opened once,
        # by one worker, except at the tail of the run.
        bar = tqdm(total=len(logs), desc="logs", unit="log", disable=not config.progress, position=0)
        clip_bar = tqdm(total=0, desc="clips", unit="clip", disable=not config.progress, position=1)
        unplanned = collections.deque(logs)
        remaining: dict[str, collections.deque] = {}  # clips not yet submitted, per planned log
        current: dict[int, Optional[str]] = {i: None for i in range(len(workers))}
        in_flight: dict[Any, tuple[str, int, str, int]] = {}  # future -> (task, worker, log, start)
        seconds = open_seconds = cpu_seconds = 0.0
        t_loop = time.perf_counter()

        def busy(i: int) -> tuple[int, bool]:
            tasks = [task for task, j, _, _ in in_flight.values() if j == i]
            return len(tasks), "plan" in tasks

        def fill(i: int) -> None:
            while True:
                count, planning = busy(i)
                if planning or count >= 2:
                    return
                name = current[i]
                if name is None or not remaining.get(name):
                    if unplanned:
                        name = current[i] = unplanned.popleft()
                        in_flight[workers[i].plan.remote(logs[name].ref)] = ("plan", i, name, -1)
                        continue
                    open_logs = [n for n, q in remaining.items() if q]
                    if not open_logs:
                        return
                    name = current[i] = max(open_logs, key=lambda n: len(remaining[n]))
                start = remaining[name].popleft()
                in_flight[workers[i].write_clip.remote(logs[name].ref, start)] = ("clip", i, name, start)

        def finish_if_done(name: str) -> None:
            if not remaining.get(name) and all(n != name for _, _, n, _ in in_flight.values()):
                remaining.pop(name, None)
                state = logs[name]
                if state.status == "pending":
                    state.status = _final_status(state)
                bar.update(1)

        for i in range(len(workers)):
            fill(i)
        while in_flight:
            [future], _ = ray.wait(list(in_flight), num_returns=1)
            task, i, name, start = in_flight.pop(future)
            state = logs[name]
            try:
                result = ray.get(future)
            except Exception as exc:  # the worker died more often than max_restarts allows
                result = {"ok": False, "status": "failed", "reason": _reason(exc)}
            if task == "plan":
                if result.get("ok"):
                    state.frames, state.cameras = result["frames"], result["cameras"]
                    state.has_images = result["has_images"]
                    starts = clip_starts(state.frames, config.clip.length, config.clip.stride)
                    todo = [s for s in starts if store.clip_id(name, s) not in done]
                    state.clips_total, state.clips_skipped = len(starts), len(starts) - len(todo)
                    if not starts:
                        state.status = "too_short"
                        state.reason = f"{state.frames} frames < clip.length = {config.clip.length}"
                    remaining[name] = collections.deque(todo)
                    clip_bar.total += len(todo)
                    clip_bar.refresh()
                else:
                    state.status, state.reason = "failed", result["reason"]
            elif result["status"] == "failed":
                if state.status != "failed":
                    # The log is unreadable from here on: drop its other clips, keep the finished ones.
                    state.status, state.reason = "failed", f"clip at frame {start}: {result['reason']}"
                    clip_bar.total -= len(remaining.pop(name, ()))
                clip_bar.update(1)
            else:
                if result["status"] == "written":
                    state.clips_written += 1
                    seconds += result["seconds"]
                    open_seconds += result["open_seconds"]
                    cpu_seconds += result["cpu_seconds"]
                else:  # "exists": a retried task whose clip had landed
                    state.clips_skipped += 1
                clip_bar.update(1)
            finish_if_done(name)
            for j in range(len(workers)):  # new clips may be waiting for any idle worker
                fill(j)
        loop_s = time.perf_counter() - t_loop
        clip_bar.close()
        bar.close()
    finally:
        for worker in workers:
            ray.kill(worker, no_restart=True)

    # 4. Record.
    store.consolidate(out)
    timing = {
        "wall_s": time.perf_counter() - t_start,
        "loop_s": loop_s,
        "worker_s": seconds,
        "worker_open_s": open_seconds,
        "worker_cpu_s": cpu_seconds,
    }
    report = _report(config, out, logs, timing)
    store.write_report(out, report)
    if config.progress:
        print(format_summary(report), file=sys.stderr)
    return report


def _final_status(state: _LogState) -> str:
    if state.status == "too_short":
        return state.status
    return "ok" if state.has_images else "conditions_only"


def _report(config: PreprocessConfig, out: str, logs: dict, timing: dict[str, float]) -> dict[str, Any]:
    rows = [s.row() for s in logs.values()]
    clips = store.completed_clips(out)
    return {
        "format": store.FORMAT,
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "store": out,
        "settings": config.store_settings(),
        "logs": rows,
        "failed": [{"log": r["log"], "path": r["path"], "reason": r["reason"]} for r in rows if r["status"] == "failed"],
        "totals": {
            "logs": len(rows),
            "logs_failed": sum(r["status"] == "failed" for r in rows),
            "clips_written": sum(r["clips_written"] for r in rows),
            "clips_skipped": sum(r["clips_skipped"] for r in rows),
            "clips_in_store": len(clips),
            "camera_frames_written": sum(
                r["clips_written"] * config.clip.length * len(r["cameras"]) for r in rows
            ),
        },
        # wall_s: the whole run; loop_s: planning and writing (step 3); worker_s: time workers spent in
        # write_clip (summed over workers), of which worker_open_s opening logs; worker_cpu_s: CPU
        # time of those calls (below worker_s when workers wait for a CPU).
        "timing": {k: round(v, 3) for k, v in timing.items()},
    }


def format_summary(report: dict[str, Any]) -> str:
    """The report as a Markdown-style table, one row per log."""
    header = ("log", "kind", "status", "frames", "clips", "written", "skipped", "reason")
    rows = [
        (
            r["log"],
            r["kind"],
            r["status"],
            str(r["frames"]),
            str(r["clips_total"]),
            str(r["clips_written"]),
            str(r["clips_skipped"]),
            (r["reason"] or "")[:80],
        )
        for r in report["logs"]
    ]
    widths = [max(len(h), *(len(row[j]) for row in rows)) if rows else len(h) for j, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    t = report["totals"]
    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(row) for row in rows]
        + [
            f"{t['clips_written']} clips written, {t['clips_skipped']} already there, {t['clips_in_store']} in "
            f"{report['store']}; {t['logs_failed']} of {t['logs']} logs failed (report.json); {report['timing']['wall_s']:.1f} s"
        ]
    )


def main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(_CONFIG_DIR), config_name="preprocess")
    def _main(cfg) -> None:
        report = run(_to_dataclass(cfg))
        if report["totals"]["logs"] and report["totals"]["logs_failed"] == report["totals"]["logs"]:
            sys.exit(1)  # nothing could be read: almost certainly a wrong input_root

    _main()


if __name__ == "__main__":
    main()
