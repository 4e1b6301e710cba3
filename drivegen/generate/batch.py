"""Generate a list of scenarios: in this process, or spread over Ray actors (one GPU each where
GPUs exist, one CPU otherwise). ``run(cfg)`` is what ``python -m drivegen.generate`` calls.

Steps:
1. Plan: parse every scenario and compute its output key (scenario, checkpoint and settings
   hashes). A scenario that does not parse is reported as failed; one whose folder already holds
   a manifest with the same key is skipped (reruns redo nothing finished).
2. Generate the rest: ``mode=local`` runs them one after another here; ``mode=ray`` starts
   ``min(ray.num_workers, scenarios, GPUs)`` ``GenerateWorker`` actors (embedded local Ray unless
   ``ray.address`` or RAY_ADDRESS names a cluster), each loading the checkpoint once. A scenario
   that fails (bad edit, missing log, out of memory, ...) is reported with its reason; the others
   complete. Progress bar over scenarios.
3. Record: report.json under ``out`` (atomic) and a summary table.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from chopgrad_core.atomic import check_writable, write_json
from chopgrad_core.progress import progress
from chopgrad_core.errors import OutputNotWritableError
from drivegen.errors import DrivegenError, GenerateConfigError
from drivegen.generate.config import GenerateConfig
from drivegen.generate.pipeline import Generator, finished, output_key, resolve_scenario_file
from drivegen.generate.scenario import load_scenario
from drivegen.model.checkpoint import check_guidance, checkpoint_digest, resolve
from drivegen.workpool import actors, format_table, init_ray, map_unordered, reason

__all__ = ["GenerateWorker", "format_summary", "run"]


class GenerateWorker:
    """A Ray actor: the checkpoint loaded once, one scenario per call; never raises for a scenario."""

    def __init__(self, cfg: GenerateConfig, checkpoint_hash: str) -> None:
        import torch

        # One CPU per actor on a CPU-only machine: torch's own threads would only compete.
        if not torch.cuda.is_available():
            torch.set_num_threads(1)
        torch.set_flush_denormal(True)  # random-weight decoders produce denormals; flushing is much faster
        self.generator = Generator(cfg, checkpoint_hash)

    def __call__(self, path: str) -> dict[str, Any]:
        return _guarded(self.generator, path)


def _guarded(generator: Generator, path: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        return generator(path)
    except Exception as exc:  # a failing scenario is that scenario's, not the batch's
        return {"scenario": Path(path).stem, "status": "failed", "reason": reason(exc),
                "traceback": traceback.format_exc(limit=6), "seconds": round(time.perf_counter() - t0, 3)}


def run(cfg: GenerateConfig) -> dict[str, Any]:
    """Generate cfg.scenarios (see the module doc); returns the report (also out/report.json)."""
    t_start = time.perf_counter()
    try:
        out = check_writable(cfg.out, "out")  # before any scenario runs (and before loading the model)
    except OutputNotWritableError as exc:  # a setting of this stage: its error type, so the CLI says it plainly
        raise GenerateConfigError(str(exc)) from None
    checkpoint = resolve(cfg.checkpoint, "checkpoint")
    digest = checkpoint_digest(checkpoint, cfg.ema)
    check_guidance(checkpoint, cfg.sampler.guidance)

    # 1. Plan.
    rows: dict[str, dict[str, Any]] = {}  # scenario file -> result row
    todo: list[str] = []
    names: dict[str, str] = {}
    for path in cfg.scenarios:
        try:
            scenario = load_scenario(resolve_scenario_file(path))
        except DrivegenError as exc:
            rows[path] = {"scenario": Path(path).stem, "status": "failed", "reason": reason(exc), "seconds": 0.0}
            continue
        if scenario.name in names:
            rows[path] = {"scenario": scenario.name, "status": "failed", "seconds": 0.0,
                          "reason": f"ScenarioError: name {scenario.name!r} is also the name of {names[scenario.name]!r}; "
                                    "outputs would collide: give each scenario its own name"}
            continue
        names[scenario.name] = path
        if finished(out / scenario.name, output_key(scenario, digest, cfg)):
            rows[path] = {"scenario": scenario.name, "status": "skipped", "folder": str(out / scenario.name),
                          "seconds": 0.0}
        else:
            todo.append(path)

    # 2. Generate.
    bar = progress(total=len(cfg.scenarios), desc="scenarios", unit="scenario", disable=not cfg.progress)
    bar.update(len(rows))
    mode = cfg.mode if cfg.mode != "auto" else ("ray" if len(todo) > 1 else "local")
    if todo and mode == "local":
        import torch

        torch.set_flush_denormal(True)
        generator = Generator(cfg, digest)
        for path in todo:
            rows[path] = _guarded(generator, path)
            bar.update(1)
    elif todo:
        # Actors on a cluster do not share this process's working folder: they get absolute paths.
        absolute = dataclasses.replace(cfg, out=str(out.resolve()), checkpoint=str(checkpoint.resolve()))
        files = {path: str(resolve_scenario_file(path).resolve()) for path in todo}
        rows.update(_run_ray(absolute, digest, files, bar))
    bar.close()

    # 3. Record.
    ordered = [dict(rows[p], file=p) for p in cfg.scenarios if p in rows]
    report = {
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint), "checkpoint_hash": digest, "mode": mode, "out": str(out),
        "scenarios": ordered,
        "failed": [{"scenario": r["scenario"], "file": r["file"], "reason": r["reason"]} for r in ordered
                   if r["status"] == "failed"],
        "totals": {s: sum(r["status"] == s for r in ordered) for s in ("generated", "skipped", "failed")},
        "wall_s": round(time.perf_counter() - t_start, 3),
    }
    # The summary first, so that each scenario's outcome (a failing one's own reason included) is
    # shown even when report.json cannot be written (the disk filled up, the folder was made
    # read-only during the run).
    print(format_summary(report), file=sys.stderr)  # the summary always: progress=false hides only the bar
    try:
        write_json(out / "report.json", report)
    except OSError as exc:
        failed = "; ".join(f"{r['scenario']}: {r['reason']}" for r in report["failed"]) or "none"
        raise GenerateConfigError(
            f"out={str(out)!r}: report.json cannot be written ({exc.strerror or exc}); the scenarios' results are in "
            f"the summary above (failed: {failed}). Free space or fix the folder's permissions and rerun: finished "
            "scenarios are skipped") from None
    return report


def _run_ray(cfg: GenerateConfig, digest: str, files: dict[str, str], bar) -> dict[str, dict[str, Any]]:
    """Each scenario (as given -> its absolute file) on an actor; rows keyed by the path as given."""
    todo = list(files)
    ray = init_ray(cfg.ray)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = max(1, min(cfg.ray.num_workers, len(todo), gpus or len(todo)))
    rows: dict[str, dict[str, Any]] = {}
    with actors(GenerateWorker, count, cfg.ray, cfg, digest, resources={"num_gpus": 1} if gpus else None) as pool:
        failed = lambda path, exc: {"scenario": Path(path).stem, "status": "failed",  # noqa: E731
                                    "reason": reason(exc), "seconds": 0.0}
        for path, row in map_unordered(pool, todo, lambda actor, path: actor.__call__.remote(files[path]), failed):
            rows[path] = row
            bar.update(1)
    return rows


def format_summary(report: dict[str, Any]) -> str:
    """The report as a Markdown-style table, one row per scenario."""
    rows = [(r["scenario"], r["status"], f"{r.get('seconds', 0.0):.1f}",
             (r.get("reason") or r.get("folder") or "")[:100]) for r in report["scenarios"]]
    t = report["totals"]
    return format_table(("scenario", "status", "seconds", "folder / reason"), rows, [
        f"{t['generated']} generated, {t['skipped']} already finished, {t['failed']} failed "
        f"({report['out']}/report.json); {report['wall_s']:.1f} s"])
