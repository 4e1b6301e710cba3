"""Every clip's results -> metrics.json, report.md, charts and the summary table.

Aggregation: fidelity scores (PSNR, SSIM, flicker, LPIPS) are means over clips of per-camera
means; mIoU comes from the confusion matrices summed over all clips (pixels weigh equally, as in
segmentation benchmarks); box recall from all boxes of all clips; FID from every frame's features
and FVD from every camera video's, each method's set against the ground truth's.

The issue's targets are checked on every report: mIoU on generated frames >= 0.6 x the probe's
mIoU on the real frames, box recall >= 0.5, and both above the swapped-conditions baseline.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from chopgrad_core.atomic import write_bytes, write_json, write_text
from drivegen.evaluate.clip import METHODS
from drivegen.model.probe import BoxRecall, Confusion
from drivegen.workpool import format_table

__all__ = ["aggregate", "format_summary", "write_report"]

MIOU_SHARE_TARGET = 0.6
BOX_RECALL_TARGET = 0.5
NOT_COMPUTED = {"fid": "not computed (set evaluate.fid_weights)", "fvd": "not computed (set evaluate.fvd_weights)",
                "lpips": "not computed (set evaluate.lpips_weights)"}


def _features(folder: Path, rows: list[dict], kind: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, list[np.ndarray]] = {}
    for r in rows:
        feats = load_file(str(folder / "clips" / f"{r['clip']}.features.safetensors"))
        for name, value in feats.items():
            method, k = name.split(".")
            if k == kind:
                out.setdefault(method, []).append(value)
    return {m: np.concatenate(v) for m, v in out.items()}


def _frechet(folder: Path, rows: list[dict], kind: str, weights: str | None) -> dict[str, Any]:
    from drivegen.evaluate.features import frechet_distance

    if not weights:
        return {m: NOT_COMPUTED[kind] for m in METHODS}
    feats = _features(folder, rows, kind)
    real = feats.get("ground_truth")
    out: dict[str, Any] = {}
    for m in METHODS:
        if m not in feats or real is None:
            out[m] = "not computed (no clips)"
            continue
        try:
            out[m] = frechet_distance(real, feats[m])
        except ValueError as exc:  # fewer than 2 samples
            out[m] = f"not computed ({exc})"
    return out


def aggregate(cfg, plan: dict[str, Any], probe_info: dict[str, Any], folder: Path, rows: list[dict]) -> dict[str, Any]:
    """The run's metrics from its clips' result rows (files under folder/clips)."""
    done = []
    for r in rows:  # skipped clips: their results are on disk
        if r["status"] in ("evaluated", "skipped"):
            try:
                done.append(json.loads((folder / "clips" / f"{r['clip']}.json").read_text()))
            except (OSError, ValueError):
                r.update(status="failed", reason="its result file is missing or unreadable; rerun")
    methods: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        have = [d for d in done if m in d["scores"]]
        if not have:
            continue
        s = [d["scores"][m] for d in have]
        confusion = Confusion()
        recall = BoxRecall(cfg.probe.min_box_pixels)
        for x in s:
            confusion.matrix += np.asarray(x["confusion"], np.int64)
            recall.merge(BoxRecall.from_dict(x["box_recall"]))
        entry = {"clips": len(have), "miou": confusion.miou(), "box_recall": recall.value,
                 "psnr": float(np.mean([x["psnr"] for x in s])), "ssim": float(np.mean([x["ssim"] for x in s])),
                 "flicker": float(np.mean([x["flicker"] for x in s])),
                 "lpips": float(np.mean([x["lpips"] for x in s])) if "lpips" in s[0] else NOT_COMPUTED["lpips"],
                 "iou": confusion.iou(), "boxes": recall.as_dict()}
        methods[m] = entry
    with_features = [d for d in done if d.get("features")]
    for kind, weights in (("fid", cfg.fid_weights), ("fvd", cfg.fvd_weights)):
        for m, value in _frechet(folder, with_features, kind, weights).items():
            if m in methods:
                methods[m][kind] = value
    targets = _targets(methods)
    return {
        "checkpoint": plan["checkpoint"], "checkpoint_hash": plan["checkpoint_hash"], "store": plan["store"],
        "split": cfg.split, "datasets": plan["dataset"]["datasets"], "cameras": plan["cameras"],
        "sampler": dataclasses.asdict(cfg.sampler),
        "probe": {"path": plan["probe"], "train_logs": probe_info.get("train_logs"),
                  "val_logs": probe_info.get("val_logs"), "train_frames": probe_info.get("train_frames"),
                  "stored_val_miou": (probe_info.get("val") or {}).get("miou"),
                  "min_box_pixels": cfg.probe.min_box_pixels},
        "methods": methods, "targets": targets,
        "clips": [{k: r.get(k) for k in ("clip", "status", "seconds", "reason") if r.get(k) is not None} for r in rows],
        "totals": {s: sum(r["status"] == s for r in rows) for s in ("evaluated", "skipped", "failed")},
        "folder": str(folder),
    }


def _targets(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    g, sw, gt = methods.get("generated"), methods.get("swapped"), methods.get("ground_truth")
    if not g or not gt:
        return {}
    ceiling = gt["miou"]
    t = {
        "miou_generated": g["miou"], "miou_ceiling": ceiling,
        "miou_share": g["miou"] / ceiling if ceiling and ceiling > 0 else float("nan"),
        "miou_share_target": MIOU_SHARE_TARGET, "box_recall": g["box_recall"], "box_recall_target": BOX_RECALL_TARGET,
    }
    t["miou_share_met"] = bool(t["miou_share"] >= MIOU_SHARE_TARGET)
    t["box_recall_met"] = bool(g["box_recall"] >= BOX_RECALL_TARGET)
    if sw:
        t["above_swapped"] = bool(g["miou"] > sw["miou"] and g["box_recall"] > sw["box_recall"])
        t["miou_swapped"], t["box_recall_swapped"] = sw["miou"], sw["box_recall"]
    return t


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, str):
        return "n/c"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


_COLUMNS = (("miou", "mIoU ↑", 3), ("box_recall", "box recall ↑", 3), ("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 3),
            ("flicker", "flicker ↓", 2), ("lpips", "LPIPS ↓", 3), ("fid", "FID ↓", 2), ("fvd", "FVD ↓", 2))


def _method_rows(metrics: dict[str, Any]) -> list[tuple[str, ...]]:
    label = {"generated": "generated (own conditions)", "swapped": "swapped conditions (ignores controls)",
             "mean_frame": "mean train frame", "autoencoded": "ground truth through the VAE",
             "ground_truth": "ground truth (ceiling)"}
    return [(label[m], str(v["clips"]), *(_fmt(v.get(k), d) for k, _, d in _COLUMNS))
            for m, v in metrics["methods"].items()]


def _target_lines(t: dict[str, Any]) -> list[str]:
    if not t:
        return ["targets: not checked (no generated clips)"]
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    lines = [f"mIoU on generated frames {t['miou_generated']:.3f} = {t['miou_share']:.2f} x the probe's "
             f"{t['miou_ceiling']:.3f} on real frames (target >= {t['miou_share_target']}: {ok(t['miou_share_met'])}); "
             f"box recall {t['box_recall']:.3f} (target >= {t['box_recall_target']}: {ok(t['box_recall_met'])})"]
    if "above_swapped" in t:
        lines.append(f"vs swapped conditions: mIoU {t['miou_swapped']:.3f}, box recall {t['box_recall_swapped']:.3f} "
                     f"(generated above both: {ok(t['above_swapped'])})")
    return lines


def format_summary(metrics: dict[str, Any]) -> str:
    tot = metrics["totals"]
    header = ("method", "clips", *(h for _, h, _ in _COLUMNS))
    return format_table(header, _method_rows(metrics), [
        *_target_lines(metrics["targets"]),
        f"{tot['evaluated']} clips evaluated, {tot['skipped']} already finished, {tot['failed']} failed "
        f"({metrics['folder']}/report.md); {metrics.get('wall_s', 0):.1f} s; n/c = not computed"])


def write_report(folder: Path, metrics: dict[str, Any]) -> None:
    charts = _charts(folder, metrics)
    write_json(folder / "metrics.json", metrics)
    tot = metrics["totals"]
    header = ("method", "clips", *(h for _, h, _ in _COLUMNS))
    lines = [
        f"# Evaluation of `{metrics['checkpoint']}`", "",
        f"Store `{metrics['store']}`, split **{metrics['split']}**, datasets {metrics['datasets']}, cameras "
        f"{', '.join(metrics['cameras'])}; sampler {metrics['sampler']}.", "",
        "Each clip is generated from its own conditions (`generated`) and, with the same noise, from another "
        "clip's conditions (`swapped`: what a model that ignores its controls scores); `mean train frame` is the "
        "per-pixel mean of the train split's real frames; `ground truth` scores the real frames themselves "
        "(the ceiling). mIoU and box recall are read by the layout probe, trained on the real frames of the "
        f"train split (logs {metrics['probe']['train_logs']}), from every frame and camera; a box counts when its "
        f"footprint has >= {metrics['probe']['min_box_pixels']} pixels and is recalled when the probe gives its "
        "class to at least half of it.", "",
        format_table(header, _method_rows(metrics)), "",
        *[f"- {ln}" for ln in _target_lines(metrics["targets"])],
        "- n/c: not computed. " + "; ".join(f"{k.upper()}: {v}" for k, v in NOT_COMPUTED.items()
                                           if any(isinstance(m.get(k), str) for m in metrics["methods"].values())),
        f"- {tot['evaluated']} clips evaluated in this run, {tot['skipped']} from an earlier run, {tot['failed']} failed.",
        "",
    ]
    failed = [c for c in metrics["clips"] if c["status"] == "failed"]
    if failed:
        lines += ["## Failed clips", ""] + [f"- `{c['clip']}`: {c.get('reason', '')}" for c in failed] + [""]
    lines += ["## Charts", ""] + [f"![{name}]({name})" for name in charts] + [""]
    lines += ["## Clips (generated | ground truth | probe on generated | layout)", ""]
    lines += [f"![{c['clip']}](mosaics/{c['clip']}.png)" for c in metrics["clips"] if c["status"] != "failed"]
    write_text(folder / "report.md", "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# Charts
# ----------------------------------------------------------------------------------------------


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _charts(folder: Path, metrics: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = metrics["methods"]
    if not methods:
        return []
    names = list(methods)
    colours = {"generated": "tab:blue", "swapped": "tab:orange", "mean_frame": "tab:gray", "autoencoded": "tab:olive",
               "ground_truth": "tab:green"}
    written = []
    # 1. Controllability: mIoU and box recall per method, with the targets.
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "miou", "probe mIoU"), (axes[1], "box_recall", "box recall")):
        vals = [methods[m][key] for m in names]
        ax.bar(names, [0 if math.isnan(v) else v for v in vals], color=[colours[m] for m in names])
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
        t = metrics["targets"]
        if key == "miou" and t:
            ax.axhline(MIOU_SHARE_TARGET * t["miou_ceiling"], ls="--", c="k", lw=1, label="0.6 x ceiling")
            ax.legend(loc="upper left", fontsize=8)
        if key == "box_recall":
            ax.axhline(BOX_RECALL_TARGET, ls="--", c="k", lw=1, label="target 0.5")
            ax.legend(loc="upper left", fontsize=8)
    _save(fig, folder / "controllability.png")
    written.append("controllability.png")
    # 2. Per-class IoU, generated against the real frames.
    classes = sorted(set().union(*(methods[m]["iou"] for m in names)))
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(names)
    for i, m in enumerate(names):
        ax.bar(np.arange(len(classes)) + i * width, [methods[m]["iou"].get(c, 0.0) for c in classes], width,
               label=m, color=colours[m])
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=35, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("IoU per layout class (probe)")
    ax.legend(fontsize=8)
    _save(fig, folder / "iou_per_class.png")
    written.append("iou_per_class.png")
    # 3. Fidelity against the ground truth (PSNR of the ground truth is infinite: left out).
    keys = [("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"), ("flicker", "flicker ↓")]
    fig, axes = plt.subplots(1, len(keys), figsize=(12, 3.4))
    for ax, (key, title) in zip(axes, keys):
        shown = [m for m in names if np.isfinite(methods[m][key])]
        ax.bar(shown, [methods[m][key] for m in shown], color=[colours[m] for m in shown])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
    _save(fig, folder / "fidelity.png")
    written.append("fidelity.png")
    return written
