"""Evaluate a checkpoint on a split: ``run(cfg)`` is what ``python -m drivegen.evaluate`` calls.

Steps:
1. Plan: the checkpoint (its newest one when given a run folder), the store and settings it was
   trained with, the split's clips of its datasets (``ClipDataset(split=...)``), each clip's key
   (checkpoint, probe, settings, clip) and swap partner (the clip half the list away, so that
   "another clip's conditions" come from as far away in the log as the split allows). Clips whose
   result file holds the current key are skipped: a rerun does only what is missing.
2. Probe and baselines: the layout probe (trained on the train split's real frames when missing and
   ``probe.train``), the per-pixel mean frame of the train split.
3. Clips: ``drivegen.evaluate.clip.ClipEvaluator`` here (``mode=local``) or on Ray actors through
   ``drivegen.workpool`` (``mode=ray``; ``auto``: ray for more than one clip). A failing clip is a
   row with its reason; the others complete.
4. Aggregate and report: mean fidelity scores, mIoU from the summed confusion matrices, box recall
   over all boxes, FID / FVD from every clip's features (``drivegen.evaluate.features``);
   ``metrics.json``, ``report.md`` and the charts (``drivegen.evaluate.report``), a summary table.

Outputs under ``out/<run>/``: metrics.json, report.md, *.png charts, mosaics/<clip>.png,
clips/<clip>.json (+ .features.safetensors), mean_frame.npy.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chopgrad_core.atomic import atomic_path, check_writable, file_digest
from chopgrad_core.errors import OutputNotWritableError
from chopgrad_core.progress import progress
from drivegen.errors import DrivegenError, EvaluateConfigError, ProbeError
from drivegen.evaluate.clip import METHODS, ClipEvaluator, finished
from drivegen.evaluate.config import EvaluateConfig
from drivegen.model.checkpoint import check_guidance, checkpoint_config, checkpoint_digest, resolve
from drivegen.workpool import actors, init_ray, map_unordered, reason

__all__ = ["EvaluateWorker", "plan", "resolve_store", "run"]


def resolve_store(cfg: EvaluateConfig) -> Path:
    """``cfg.store``, else the store the checkpoint was trained on."""
    if cfg.store:
        return Path(cfg.store).expanduser()
    return Path(checkpoint_config(resolve(cfg.checkpoint, "checkpoint"))["data"]["store"])


# ----------------------------------------------------------------------------------------------
# 1. Plan
# ----------------------------------------------------------------------------------------------


def plan(cfg: EvaluateConfig) -> dict[str, Any]:
    """What will be evaluated, where, against which probe; no model is loaded."""
    from drivegen.data.dataset import ClipDataset

    checkpoint = resolve(cfg.checkpoint, "checkpoint")
    train_cfg = checkpoint_config(checkpoint)
    check_guidance(checkpoint, cfg.sampler.guidance, config=train_cfg)
    data = train_cfg["data"]
    store = resolve_store(cfg)
    datasets = cfg.datasets if cfg.datasets is not None else data.get("datasets")
    dataset_args = dict(clip_length=int(data["clip_length"]), image_size=list(data["image_size"]),
                        sampling="sequential", datasets=datasets, split=cfg.split)
    try:
        ds = ClipDataset(store, **dataset_args)
    except DrivegenError as exc:  # the dataset's words, with this stage's keys
        raise EvaluateConfigError(f"store={str(store)!r}, split={cfg.split!r}, datasets={datasets}: {exc} (the store "
                                  "and datasets default to the checkpoint's data.store and data.datasets)") from None
    # Item names as the store names clips, <log>__<first frame>: a stored clip's own name when it holds
    # one window, else one name per window (sequential items of a clip follow each other, clip_length apart).
    names, seen = [], {}
    for i in range(len(ds)):
        clip = ds.metadata(i)
        key = (clip["log"], int(clip["start_frame"]))
        seen[key] = seen.get(key, -1) + 1
        names.append(f"{clip['log']}__{key[1] + seen[key] * ds.clip_length:06d}")
    count = len(names) if cfg.max_clips is None else min(cfg.max_clips, len(names))
    run_name = cfg.run or f"{checkpoint.parent.name}-{checkpoint.name}"
    device = cfg.torch_device()
    items = []
    for i in range(count):
        j = (i + count // 2) % count if count > 1 else None
        items.append({"index": i, "name": names[i], "log": ds.metadata(i)["log"],
                      "swap_index": j, "swap_name": names[j] if j is not None else None})
    return {"checkpoint": str(checkpoint.resolve()), "checkpoint_hash": checkpoint_digest(checkpoint, cfg.ema),
            "train_config": train_cfg, "store": str(store.resolve()), "dataset": dataset_args,
            "cameras": list(ds.cameras), "items": items, "run": run_name,
            "folder": str((Path(cfg.out) / run_name).resolve()), "device": device}


# ----------------------------------------------------------------------------------------------
# 2. Probe and the mean frame
# ----------------------------------------------------------------------------------------------


def ensure_probe(cfg: EvaluateConfig, store: Path, image_size: list[int]) -> tuple[Path, dict[str, Any]]:
    from drivegen.evaluate.probe import format_probe, probe_path, split_logs, train_probe
    from drivegen.model.probe import load_probe

    path = probe_path(cfg, store)
    why = None
    if not path.is_file():
        why = "no layout probe there"
    else:
        # A probe trained on other logs than the store's train split now holds (the store was
        # preprocessed again with another split) could have seen today's val logs: never reuse it.
        _, info = load_probe(path, key="probe.path")
        if info.get("train_logs") != split_logs(store, "train"):
            why = (f"it was trained on logs {info.get('train_logs')}, the store's train split now holds "
                   f"{split_logs(store, 'train')}")
        else:
            # A probe trained with other settings measures something else (probes written before
            # probe.augment existed were trained without it).
            wanted = {k: getattr(cfg.probe, k) for k in ("steps", "batch_size", "lr", "seed", "augment")}
            found = {k: info.get(k, 0.0 if k == "augment" else None) for k in wanted}
            if found != wanted:
                why = f"it was trained with probe settings {found}, the config asks for {wanted}"
    if why is not None:
        if not cfg.probe.train:
            raise ProbeError(f"probe.path={str(path)!r}: {why} and probe.train=false; train one with "
                             "`python -m drivegen.evaluate.probe` or set probe.train=true")
        print(f"drivegen.evaluate: probe {path}: {why}; training one on the train split of {store}", file=sys.stderr)
        _, info = train_probe(cfg, store, cfg.progress)
        print(format_probe(info, path), file=sys.stderr)
    _, info = load_probe(path, key="probe.path")
    if list(info["image_size"]) != list(image_size):
        raise ProbeError(f"probe.path={str(path)!r} was trained at {info['image_size']} pixels, the clips are "
                         f"{list(image_size)}: train a probe on this store (`python -m drivegen.evaluate.probe`)")
    return path, info


def ensure_mean_frame(folder: Path, store: Path) -> Path:
    """The per-pixel mean of the train split's real frames (every camera), (3, H, W) in [-1, 1], cached."""
    from drivegen.evaluate.probe import load_frames

    path = folder / "mean_frame.npy"
    stamp = folder / "mean_frame.json"
    try:
        if json.loads(stamp.read_text())["store"] == str(store) and path.is_file():
            return path
    except (OSError, ValueError, KeyError):
        pass
    frames = load_frames(store, "train")
    if not frames["n"]:
        raise EvaluateConfigError(f"the store {str(store)!r} has no train-split frames with images for the mean-frame "
                                  "baseline; preprocess it with a split")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, frames["images"].mean(0).numpy())
    from chopgrad_core.atomic import write_json

    write_json(stamp, {"store": str(store), "frames": frames["n"], "logs": frames["logs"]})
    return path


# ----------------------------------------------------------------------------------------------
# 3. Clips
# ----------------------------------------------------------------------------------------------


class EvaluateWorker:
    """A Ray actor: the checkpoint, probe and feature networks loaded once, one clip per call; never raises for a clip."""

    def __init__(self, cfg: EvaluateConfig, plan_: dict[str, Any]) -> None:
        if not torch.cuda.is_available():
            torch.set_num_threads(1)  # one CPU per actor: torch's own threads would only compete
        torch.set_flush_denormal(True)  # random-weight decoders produce denormals; flushing is much faster
        self.evaluator = ClipEvaluator(cfg, plan_)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return _guarded(self.evaluator, item)


def _guarded(evaluator: ClipEvaluator, item: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        return evaluator(item)
    except Exception as exc:  # a failing clip is that clip's, not the run's
        return {"clip": item["name"], "status": "failed", "reason": reason(exc),
                "traceback": traceback.format_exc(limit=6), "seconds": round(time.perf_counter() - t0, 3)}


def _run_clips(cfg: EvaluateConfig, p: dict[str, Any], todo: list[dict], bar) -> tuple[dict[str, dict], str]:
    mode = cfg.mode if cfg.mode != "auto" else ("ray" if len(todo) > 1 else "local")
    rows: dict[str, dict] = {}
    if todo and mode == "local":
        torch.set_flush_denormal(True)
        evaluator = ClipEvaluator(cfg, p)
        for item in todo:
            rows[item["name"]] = _guarded(evaluator, item)
            bar.update(1)
    elif todo:
        ray = init_ray(cfg.ray)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = max(1, min(cfg.ray.num_workers, len(todo), gpus or len(todo)))
        worker_plan = dict(p, device="cuda" if gpus else "cpu")
        failed = lambda item, exc: {"clip": item["name"], "status": "failed", "reason": reason(exc),  # noqa: E731
                                    "seconds": 0.0}
        with actors(EvaluateWorker, count, cfg.ray, cfg, worker_plan,
                    resources={"num_gpus": 1} if gpus else None) as pool:
            for item, row in map_unordered(pool, todo, lambda actor, item: actor.__call__.remote(item), failed):
                rows[item["name"]] = row
                bar.update(1)
    return rows, mode


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate (see the module doc); returns the metrics (also out/<run>/metrics.json)."""
    from drivegen.evaluate.report import aggregate, format_summary, write_report

    t_start = time.perf_counter()
    for key in ("fid_weights", "fvd_weights", "lpips_weights"):  # before any work: a missing file names its key
        value = getattr(cfg, key)
        if value and not Path(value).expanduser().is_file():
            from drivegen.errors import WeightsFileError

            raise WeightsFileError(f"{key}={value!r}: no such file. Nothing is downloaded: put the weights file "
                                   f"there (drivegen/evaluate/features.py names the files) or set {key}=null")
    # 1. Plan.
    p = plan(cfg)
    folder = Path(p["folder"])
    try:
        check_writable(folder, "out")
    except OutputNotWritableError as exc:
        raise EvaluateConfigError(str(exc)) from None
    # 2. Probe and mean frame (actors get absolute paths: a cluster's workers do not share this folder).
    store = Path(p["store"])
    probe, probe_info = ensure_probe(cfg, store, p["dataset"]["image_size"])
    p["probe"] = str(probe.resolve())
    p["mean_frame"] = str(ensure_mean_frame(folder, store).resolve())
    settings = json.dumps({"checkpoint": p["checkpoint_hash"], "probe": file_digest(probe),
                           "mean_frame": file_digest(Path(p["mean_frame"])), "settings": cfg.output_settings(),
                           "methods": METHODS},
                          sort_keys=True)
    for item in p["items"]:
        item["key"] = hashlib.sha256(f"{settings}|{item['name']}|{item['swap_name']}".encode()).hexdigest()
    todo = [it for it in p["items"] if not finished(folder, it["name"], it["key"])]
    rows = {it["name"]: {"clip": it["name"], "status": "skipped", "seconds": 0.0}
            for it in p["items"] if it not in todo}
    # 3. Clips.
    bar = progress(total=len(p["items"]), desc="clips", unit="clip", disable=not cfg.progress)
    bar.update(len(rows))
    absolute = dataclasses.replace(cfg, out=str(Path(cfg.out).resolve()))
    done, mode = _run_clips(absolute, p, todo, bar)
    rows.update(done)
    bar.close()
    # 4. Aggregate and report.
    ordered = [rows[it["name"]] for it in p["items"]]
    metrics = aggregate(cfg, p, probe_info, folder, ordered)
    metrics.update(mode=mode, wall_s=round(time.perf_counter() - t_start, 3),
                   finished_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    print(format_summary(metrics), file=sys.stderr)
    write_report(folder, metrics)
    return metrics
