"""The preprocessing driver: driving logs -> fixed-length multi-camera clips in a Zarr v3 store.

    python -m drivegen.preprocess                                   # datasets/sample -> datasets/clips.zarr
    python -m drivegen.preprocess input_root=/data/nuscenes out=/data/clips.zarr clip.length=16
    python -m drivegen.preprocess ray.address=auto                  # join a running Ray cluster
    python -m drivegen.preprocess verify=true                       # check every clip's checksums, write nothing

Steps (`run`):
1. Discover the logs under `input_root` (`drivegen.data.ingest.discover_logs`) and create the store,
   or check that an existing one was written with the same settings; remove dead writers' partial
   clips and the broken clips (a missing or resized file, or a bad checksum that `verify=true`
   recorded) so that they are written again. Other runs may write into the same store at the same
   time (`drivegen.data.store` says how that stays safe).
2. Start Ray (embedded local instance unless `ray.address` or RAY_ADDRESS names a cluster) and
   `ray.num_workers` `ClipWorker` actors. Actors restart when their process dies
   (`ray.max_restarts`) and Ray retries the task they were running (`ray.max_task_retries`; a task
   whose actor is only unreachable for now, its node lost, is submitted again:
   `drivegen.workpool.unavailable`): clip writes are idempotent (`drivegen.data.store.write_clip`),
   so a retry never duplicates or loses a clip.
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
import datetime
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from chopgrad_core.progress import progress
from drivegen.data import store
from drivegen.data.clips import clip_starts
from drivegen.data.preprocess.config import PreprocessConfig
from drivegen.data.preprocess.worker import ClipWorker
from drivegen.errors import PreprocessConfigError
from drivegen.workpool import actors, format_table, init_ray, reason, unavailable

__all__ = ["format_summary", "run", "verify"]


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
    dropped: Optional[dict[str, Any]] = None  # the reader's Dropped.summary(); None if it does not count
    boxes_over_max_boxes: int = 0  # boxes in view beyond conditions.max_boxes, over the clips written

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
            # What the log left out (readers' Dropped.summary()), plus boxes not tokenised in the clips
            # written by this run: see _dropped_text for the summary's wording.
            "dropped": None if self.dropped is None else {**self.dropped,
                                                          "boxes_over_max_boxes": self.boxes_over_max_boxes},
        }


def run(config: PreprocessConfig, refs: Optional[list] = None, opener: Callable | None = None) -> dict[str, Any]:
    """Preprocess `refs` (default: every log under config.input_root) into config.out.

    `opener(ref) -> LogReader` replaces drivegen.data.ingest.open_log (tests wrap it to inject
    faults); it must be picklable, since every worker calls it. Returns the report (also written
    to <out>/report.json).
    """
    t_start = time.perf_counter()
    out = str(Path(config.out).resolve())
    if config.verify:
        return verify(out)
    # 1. Logs and store.
    if refs is None:
        from drivegen.data.ingest import discover_logs

        if not Path(config.input_root).is_dir():
            raise PreprocessConfigError(
                f"input_root = {config.input_root!r} is not a directory; point input_root= at your logs "
                f"(python -m drivegen.data.sample_data --out datasets/sample writes sample ones)"
            )
        refs = list(discover_logs(config.input_root))
    logs = {ref.name: _LogState(ref=ref) for ref in refs}
    if len(logs) != len(refs):
        raise PreprocessConfigError(f"two logs share a name in {[r.name for r in refs]}; clip ids would collide")
    store.open_store(out, config.store_settings())
    # Other runs may be writing into this store right now: only dead writers' leftovers go.
    store.remove_stale_partial(out)
    # Clips with a missing or resized file (or a bad checksum found by verify=true) are removed
    # here, so that this run writes them again.
    broken = store.repair(out)
    if broken:
        print(f"drivegen.preprocess: {len(broken)} broken clips removed from {out}, to be written again:\n  "
              + "\n  ".join(f"{reason}" for reason in broken.values()), file=sys.stderr)
    done = store.completed_clips(out)

    # 2. Ray and the workers (killed when the run ends, whatever ends it).
    ray = init_ray(config.ray)
    with actors(ClipWorker, config.ray.num_workers, config.ray, out, config, opener) as workers:
        # 3. Plan and write in one loop. A worker plans a log (opens it, counts its clips), then
        # writes that log's clips while some are left, two in flight so that it never waits for
        # the driver; then it plans the next unopened log. Only when none is left does it join
        # the fullest log still being written (which it must open too). So a log is opened once,
        # by one worker, except at the tail of the run.
        bar = progress(total=len(logs), desc="logs", unit="log", disable=not config.progress, position=0)
        clip_bar = progress(total=0, desc="clips", unit="clip", disable=not config.progress, position=1)
        unplanned = collections.deque(logs)
        remaining: dict[str, collections.deque] = {}  # clips not yet submitted, per planned log
        current: dict[int, Optional[str]] = {i: None for i in range(len(workers))}
        in_flight: dict[Any, tuple[str, int, str, int]] = {}  # future -> (task, worker, log, start)
        seconds = open_seconds = cpu_seconds = 0.0
        t_loop = time.perf_counter()

        def busy(i: int) -> tuple[int, bool]:
            tasks = [task for task, j, _, _ in in_flight.values() if j == i]
            return len(tasks), "plan" in tasks

        def submit(task: str, i: int, name: str, start: int) -> None:
            ref = logs[name].ref
            future = workers[i].plan.remote(ref) if task == "plan" else workers[i].write_clip.remote(ref, start)
            in_flight[future] = (task, i, name, start)

        def fill(i: int) -> None:
            while True:
                count, planning = busy(i)
                if planning or count >= 2:
                    return
                name = current[i]
                if name is None or not remaining.get(name):
                    if unplanned:
                        name = current[i] = unplanned.popleft()
                        submit("plan", i, name, -1)
                        continue
                    open_logs = [n for n, q in remaining.items() if q]
                    if not open_logs:
                        return
                    name = current[i] = max(open_logs, key=lambda n: len(remaining[n]))
                submit("clip", i, name, remaining[name].popleft())

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
            except Exception as exc:
                if unavailable(exc):  # not lost: the same worker gets the task again
                    submit(task, i, name, start)
                    continue
                result = {"ok": False, "status": "failed", "reason": reason(exc)}  # died beyond max_restarts
            if task == "plan":
                if result.get("ok"):
                    state.frames, state.cameras = result["frames"], result["cameras"]
                    state.has_images = result["has_images"]
                    state.dropped = result.get("dropped")
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
                    state.boxes_over_max_boxes += result.get("boxes_over_max_boxes", 0)
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

    # 4. Record.
    store.remove_stale_partial(out)  # this run's killed workers' leftovers (live writers' stay)
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
    print(format_summary(report), file=sys.stderr)  # the summary always: progress=false hides only the bars
    return report


def verify(out: str) -> dict[str, Any]:
    """``verify=true``: check every clip of the store at ``out`` fully (every file's size and
    checksum, against its manifest) and print the broken ones; writes no clip. The broken ones are
    recorded in <out>/verify.json, and the next normal run removes and rewrites them."""
    if not (Path(out) / "zarr.json").is_file():
        raise PreprocessConfigError(f"out = {out!r} holds no clip store to verify; point out= at one")
    t0 = time.perf_counter()
    result = store.verify_store(out)
    rows = [(clip, why[:140]) for clip, why in result["broken"].items()]
    fix = (f"run `python -m drivegen.preprocess out={out}` (without verify) to rewrite them"
           if rows else "nothing to repair")
    print(format_table(("broken clip", "reason"), rows, [
        f"{result['clips']} clips checked, {len(rows)} broken in {out}; {fix}; {time.perf_counter() - t0:.1f} s"]),
        file=sys.stderr)
    return result


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
            # Logs that left something out, by what (each log's counts are in its row's "dropped").
            "logs_with_unmapped_classes": sum(bool(r["dropped"] and r["dropped"]["unmapped_classes"]) for r in rows),
            "logs_with_labels_without_box": sum(bool(r["dropped"] and r["dropped"]["labels_without_box"]) for r in rows),
            "logs_without_map": sum(bool(r["dropped"] and not r["dropped"]["has_map"]) for r in rows),
            "logs_with_cameras_without_images": sum(bool(r["dropped"] and r["dropped"]["cameras_without_images"])
                                                    for r in rows),
            "logs_with_frames_outside_span": sum(bool(r["dropped"] and r["dropped"]["frames_outside_span"])
                                                 for r in rows),
        },
        # wall_s: the whole run; loop_s: planning and writing (step 3); worker_s: time workers spent in
        # write_clip (summed over workers), of which worker_open_s opening logs; worker_cpu_s: CPU
        # time of those calls (below worker_s when workers wait for a CPU).
        "timing": {k: round(v, 3) for k, v in timing.items()},
    }


def _dropped_text(dropped: Optional[dict[str, Any]]) -> str:
    """One log's `dropped` in a few words, e.g. 'classes animal x8; no map; 4 frames outside span'."""
    if dropped is None:  # a log that could not be read (or a reader that does not count)
        return ""
    parts = []
    if dropped["unmapped_classes"]:
        parts.append("classes " + ", ".join(f"{k} x{v}" for k, v in dropped["unmapped_classes"].items()))
    if dropped["labels_without_box"]:
        parts.append(f"{dropped['labels_without_box']} labels without 3D box")
    if not dropped["has_map"]:
        parts.append("no map")
    if dropped["cameras_without_images"]:
        parts.append("no images " + ", ".join(f"{k} x{v}" for k, v in dropped["cameras_without_images"].items()))
    if dropped["frames_outside_span"]:
        parts.append(f"{dropped['frames_outside_span']} frames outside span")
    if dropped.get("boxes_over_max_boxes"):
        parts.append(f"{dropped['boxes_over_max_boxes']} boxes over max_boxes")
    return "; ".join(parts) or "-"


def format_summary(report: dict[str, Any]) -> str:
    """The report as a Markdown-style table, one row per log (`dropped`: what the log left out)."""
    header = ("log", "kind", "status", "frames", "clips", "written", "skipped", "dropped", "reason")
    rows = [(r["log"], r["kind"], r["status"], str(r["frames"]), str(r["clips_total"]), str(r["clips_written"]),
             str(r["clips_skipped"]), _dropped_text(r.get("dropped")), (r["reason"] or "")[:80])
            for r in report["logs"]]
    t = report["totals"]
    return format_table(header, rows, [
        f"{t['clips_written']} clips written, {t['clips_skipped']} already there, {t['clips_in_store']} in "
        f"{report['store']}; {t['logs_failed']} of {t['logs']} logs failed (report.json); "
        f"{report['timing']['wall_s']:.1f} s",
        "left out (column dropped; counts per log and per clip in report.json and clip attrs): "
        f"{t['logs_with_unmapped_classes']} logs with classes outside the taxonomy, "
        f"{t['logs_with_labels_without_box']} with labels without 3D box, {t['logs_without_map']} without map, "
        f"{t['logs_with_cameras_without_images']} with cameras without images, "
        f"{t['logs_with_frames_outside_span']} with frames outside the annotated span"])
