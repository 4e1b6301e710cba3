"""Does the ChopGrad pixel loss help? The same model, data, steps and seeds trained five ways, each
scored by ``python -m drivegen.evaluate`` on the val split.

Variants (overrides on top of the scenario's training command):

- ``flow only``: ``objective.pixel_weight=0`` (no decoder in the loop);
- ``D=0`` / ``D=1`` / ``D=2``: the ChopGrad pixel loss, sliding window of D earlier frame groups
  (``chopgrad.mode=sliding chopgrad.window=D``);
- ``full``: the pixel loss with plain backprop through the whole decoder (``chopgrad.mode=full``),
  where it fits;
- ``D=1 w=1`` / ``D=1 w=5``: the default window with the pixel loss weighted 1 and 5 instead of 0.1
  (``objective.pixel_weight``); not in the h200 scenario's order, name them with ``--variants``.

Each (variant, seed) is one ``python -m drivegen.train`` process (its ``summary.json`` gives the
median step time and the peak memory: CUDA's max allocated, or the process's peak RSS on the CPU)
and one ``python -m drivegen.evaluate`` (``mode=local``; the layout probe is trained once per store
and shared; the sampler's seed is the evaluation's, the same for every run). The table gives the
mean and the spread (min..max) over seeds of probe mIoU, box recall, PSNR, LPIPS and FVD (the last
two only with ``--lpips-weights`` / ``--fvd-weights``: local files, nothing downloads), peak memory
and step time.

Scenarios (``--scenario``):

- ``cpu``: the embedded default (``make train``'s settings: tiny model, fitted sample VAE, 64x112,
  6 cameras, 5 frames, 150 steps) on the store ``make train`` writes, seeds 0 1 2. Runs one after
  another.
- ``h200``: one GPU. The 1.3B-shaped Wan transformer trained from scratch is too slow to learn in
  minutes, so a mid-size one (8 layers, width 512, bf16) at 256x448, 6 cameras, 33 frames (9 latent
  frame groups: D=0..2 are real truncations) on a store of the sample world with 7 nuScenes scenes
  (clips at frames 0 and 10 of each 43-frame scene: 12 train clips, 2 val clips from the last
  scene), seed 0 only. Built for one call of a rented GPU machine that has no Ray and a few
  minutes: ``--build-store`` writes the store there without Ray (``benchmarks/ablation_store.py``);
  ``--steps auto`` measures each variant's step time and peak memory first
  (``benchmarks/ablation_calibrate.py``) and picks the step count that fits ``--budget`` seconds;
  the five runs then share the GPU (``--parallel``: started together where their measured peaks fit
  in its memory, each evaluated as soon as it finishes; the probe and the mean frame are prepared
  once beside them), so the table's step time is the calibration's, measured alone. No new run starts when
  its estimate would pass the budget, anything still running at the budget is stopped (a run that
  trained keeps its row, unevaluated), and the results are written after every finished run.
  Run on 2026-12-02 (RESULTS.md), 100 steps in two calls of about 8 minutes (``--variants "flow only"
  D=0 full``, then ``D=1 D=2``: one call does not evaluate all five): every variant scored what the
  real frames score through the ``sample`` VAE (mIoU 0.305-0.306 against 0.303), the VAE being the bound.

Writes ``<results>/ablation_<scenario>_<date>.{md,json}`` (``--results``, default
``benchmarks/results``), the plot ``benchmarks/ablation_<scenario>.png`` (``--plot``) and the runs under
``--work`` (default ``outputs/ablation/<scenario>``); a (variant, seed) whose evaluation is there is
not run again.

    python benchmarks/ablation.py --scenario cpu                       # after make train (its store)
    python benchmarks/ablation.py --scenario cpu --seeds 0 --steps 50  # a quick look
    python benchmarks/ablation.py --scenario h200 --build-store --logs outputs/ablation/h200_logs --budget 480
    python benchmarks/ablation.py --scenario h200 --report-only --work outputs/ablation/h200 --steps 30 \
        --calibration benchmarks/results/ablation_h200_calibration_2026-12-02.json   # the table from copied-back runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chopgrad_core.atomic import write_json, write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

VARIANTS = {
    "flow only": ["objective.pixel_weight=0"],
    "D=0": ["chopgrad.mode=sliding", "chopgrad.window=0"],
    "D=1": ["chopgrad.mode=sliding", "chopgrad.window=1"],
    "D=2": ["chopgrad.mode=sliding", "chopgrad.window=2"],
    "full": ["chopgrad.mode=full"],
    # The pixel loss's weight (the default 0.1 is ~1% of the loss at the start of training): the
    # default window (sliding D=1) at 1 and 5.
    "D=1 w=1": ["chopgrad.mode=sliding", "chopgrad.window=1", "objective.pixel_weight=1.0"],
    "D=1 w=5": ["chopgrad.mode=sliding", "chopgrad.window=1", "objective.pixel_weight=5.0"],
}

SCENARIOS = {
    "cpu": dict(store="datasets/train_clips.zarr", steps=150, seeds=[0, 1, 2], train=["trainer.device=cpu"],
                evaluate=["device=cpu"]),
    # One seed: three do not fit in the few minutes of GPU time this scenario is built for.
    # trainer=gpu's bf16 and AdamW, but: lr 5e-4 with a short warmup (a model trained from scratch for
    # a few hundred steps at most, not a pretrained one), no gradient checkpointing (the mid-size
    # transformer's activations at 24k tokens are a few GiB), no val loss or intermediate checkpoints
    # (evaluate scores the final one), the prepared inputs of all 12 train clips cached (~4 GB), and
    # no control dropout, named here so that the runs do not depend on the default (evaluation
    # samples without guidance, which is all the dropout is for).
    "h200": dict(store="outputs/ablation/h200/store.zarr", steps="auto", seeds=[0], parallel=True,
                 order=["D=1", "flow only", "D=0", "full", "D=2"],
                 build=dict(scenes=7, image_size=[256, 448], clip_length=33, stride=10, val_scenes=1, seed=0),
                 min_steps=20, max_steps=600,
                 train=["trainer=gpu", "model.num_layers=8", "model.num_attention_heads=8",
                        "model.attention_head_dim=64", "model.ffn_dim=2048", "model.text_dim=512",
                        "data.image_size=[256,448]", "data.clip_length=33", "data.cache_mb=8192",
                        "trainer.gradient_checkpointing=false", "trainer.lr=5e-4", "trainer.lr_warmup=10",
                        "trainer.val_every=0", "trainer.save_every=0", "objective.control_dropout=0.0"],
                 evaluate=["device=cuda"]),
}

METRICS = (("miou", "probe mIoU", 3), ("box_recall", "box recall", 3), ("psnr", "PSNR", 2), ("lpips", "LPIPS", 3),
           ("fvd", "FVD", 1), ("peak_memory_gib", "peak GiB", 2), ("step_s", "step s", 3),
           ("step_s_shared", "step s (GPU shared)", 3))
OPTIONAL = ("step_s_shared",)  # columns shown only when some run has them


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (log {log}):\n{tail}")


def _name(variant: str, seed: int) -> str:
    return f"{variant.replace(' ', '_').replace('=', '')}_seed{seed}"


def train_command(args, scenario: dict, variant: str, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "drivegen.train", f"data.store={args.store}", f"trainer.out={out}",
            f"trainer.steps={args.steps}", f"trainer.seed={seed}", "trainer.overwrite=true",
            "trainer.tensorboard=false", "trainer.sample_steps=0", *scenario["train"], *args.train_set,
            *VARIANTS[variant]]


def evaluate_command(args, scenario: dict, name: str, out: Path, work: Path) -> list[str]:
    cmd = [sys.executable, "-m", "drivegen.evaluate", f"checkpoint={out}", f"out={work / 'evaluate'}",
           f"run={name}", "mode=local", "progress=false", *scenario["evaluate"], *args.evaluate_set]
    if scenario.get("parallel"):  # the store named as prepare_evaluation named it: its mean frame is reused
        cmd.append(f"store={Path(args.store).resolve()}")
    for key in ("lpips_weights", "fid_weights", "fvd_weights"):
        if getattr(args, key):
            cmd.append(f"{key}={getattr(args, key)}")
    return cmd


def collect(variant: str, seed: int, out: Path, ev: Path, calibration: dict | None = None) -> dict:
    """One (variant, seed)'s row: its training summary, and its evaluation's metrics when there are
    any (a run trained but not evaluated keeps its step time, memory and losses; ``evaluated``: False)."""
    summary = json.loads((out / "summary.json").read_text())
    metrics = json.loads((ev / "metrics.json").read_text()) if (ev / "metrics.json").is_file() else None
    methods = metrics["methods"] if metrics else {}
    g = methods.get("generated", {})
    row = {"variant": variant, "seed": seed, "evaluated": metrics is not None, "miou": g.get("miou"),
           "box_recall": g.get("box_recall"), "psnr": g.get("psnr"), "lpips": g.get("lpips"), "fvd": g.get("fvd"),
           "peak_memory_gib": summary.get("peak_memory_gib"), "step_s": summary.get("step_s_median"),
           "flow_last": summary.get("flow_last"), "pixel_last": summary.get("pixel_last"),
           "control_gap": summary.get("control_gap"), "swapped_miou": methods.get("swapped", {}).get("miou"),
           "ceiling": methods.get("ground_truth", {}).get("miou"),
           "autoencoded_miou": methods.get("autoencoded", {}).get("miou"),
           "autoencoded_box_recall": methods.get("autoencoded", {}).get("box_recall"),
           "autoencoded_psnr": methods.get("autoencoded", {}).get("psnr"),
           "train_s": summary.get("seconds"), "evaluate_s": metrics.get("wall_s") if metrics else None}
    if calibration is not None:  # runs shared the GPU: the step time measured alone is the table's
        row["step_s_shared"] = row["step_s"]
        row["step_s"] = calibration.get("variants", {}).get(variant, {}).get("step_s")
    return row


def one(args, scenario: dict, variant: str, seed: int, work: Path) -> dict:
    """Train and evaluate one (variant, seed); reuse its results when both are already there."""
    name = _name(variant, seed)
    out, ev = work / "runs" / name, work / "evaluate" / name
    if not (ev / "metrics.json").is_file():
        run(train_command(args, scenario, variant, seed, out), work / "logs" / f"{name}.train.log")
        run(evaluate_command(args, scenario, name, out, work), work / "logs" / f"{name}.evaluate.log")
    return collect(variant, seed, out, ev)


# ----------------------------------------------------------------------------------------------
# The h200 scenario: store, calibration, evaluation's shared inputs, runs sharing the GPU
# ----------------------------------------------------------------------------------------------


def prepare_evaluation(store: str, folder: str, overrides: list[str]) -> None:
    """The layout probe (trained when missing, as ``python -m drivegen.evaluate`` would) or the mean
    frame (into ``folder``), once for every run's evaluation; run in a process of its own."""
    from drivegen.config import compose
    from drivegen.evaluate.config import EvaluateConfig
    from drivegen.evaluate.run import ensure_mean_frame, ensure_probe

    path = Path(store).resolve()
    if folder:
        ensure_mean_frame(Path(folder), path)
    else:
        from drivegen.data.dataset import ClipDataset

        cfg = compose(EvaluateConfig, "evaluate", [f"store={path}", *overrides])
        ensure_probe(cfg, path, list(ClipDataset(path).image_size))


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); import ablation; {code}"]


def run_start(cal: dict, given: float | None) -> float:
    """Seconds a run needs before its steps (start, Trainer, first pass over the train clips) and after
    them (save, control gap): ``--run-start-s``, else from the calibration."""
    if given is not None:
        return given
    return cal["import_s"] + cal["init_s"] + cal["train_clips"] * cal["prepare_s"] + 15


def plan_steps(cal: dict, variants: list[str], left_s: float, n_val: int, min_steps: int, max_steps: int,
               mem_cap: float | None, start_s: float | None = None) -> tuple[int, dict]:
    """Steps that let every variant train and be evaluated within ``left_s`` seconds, the runs
    sharing the GPU (their GPU work adds up; their starts, cache fills and evaluations' CPU work overlap)."""
    ok = [v for v in variants if "step_s" in cal["variants"].get(v, {})]
    work = sum(cal["variants"][v]["step_s"] for v in ok)
    start = run_start(cal, start_s)
    evaluate = 40 + n_val * (4 * cal["prepare_s"] + 5) + n_val * len(ok) * 2 * 20 * cal["sampler_step_s"]
    waves = 1
    if mem_cap:
        used = 0.0
        for v in ok:
            peak = _peak(cal, v)
            if used + peak > mem_cap:
                waves, used = waves + 1, 0.0
            used += peak
    window = left_s - waves * (start + evaluate) - 20
    steps = int(0.85 * window / work) if work > 0 else max_steps
    est = {"gpu_s_per_step_all_variants": round(work, 3), "run_start_s": round(start, 1),
           "evaluation_s": round(evaluate, 1), "waves": waves, "window_s": round(window, 1)}
    return max(min(min_steps, max_steps), min(max_steps, steps)), est


def _peak(cal: dict | None, variant: str) -> float:
    """Device memory to reserve for a variant's run: its calibrated peak, plus the CUDA context and
    the allocator's slack (its evaluation needs less)."""
    peak = (cal or {}).get("variants", {}).get(variant, {}).get("peak_gib")
    return 4.0 if peak is None else peak * 1.15 + 2.0


def parallel(args, sc: dict, todo: list[tuple[str, int]], work: Path, cal: dict | None, t0: float,
             deadline: float | None, mem_cap: float | None, write) -> list[dict]:
    """Run the (variant, seed)s sharing the device: each trains, then is evaluated; a run starts when
    its calibrated peak fits beside the running ones and its estimate fits before ``deadline``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    # The cores shared out among the runs and the two preparing processes (torch takes them all otherwise).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (len(todo) + 2))))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shared = work / "evaluate" / "_shared"
    elapsed = lambda: time.perf_counter() - t0  # noqa: E731

    def start(cmd: list[str], log: Path) -> subprocess.Popen:
        f = open(log, "w")
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)

    # The probe and the mean frame, once, beside the runs (evaluations wait for them).
    prep = [start(_python(f"ablation.prepare_evaluation({args.store!r}, '', {list(sc['evaluate']) + args.evaluate_set!r})"),
                  logs / "probe.log"),
            start(_python(f"ablation.prepare_evaluation({args.store!r}, {str(shared)!r}, [])"), logs / "mean_frame.log")]
    rows: list[dict] = []
    pending = list(todo)
    running: dict[tuple[str, int], dict] = {}
    est_start = run_start(cal, args.run_start_s) if cal else 0.0
    evaluated: list[float] = []  # seconds of the finished evaluations
    while pending or running:
        # Start what fits (memory beside the running runs, time before the deadline), in priority order.
        for key in list(pending):
            variant, seed = key
            used = sum(r["mem"] for r in running.values())
            need = _peak(cal, variant)
            if mem_cap and running and used + need > mem_cap:
                continue
            step_s = (cal or {}).get("variants", {}).get(variant, {}).get("step_s")
            if cal and "failed" in cal.get("variants", {}).get(variant, {}):
                pending.remove(key)
                rows.append({"variant": variant, "seed": seed, "failed": f"calibration: {cal['variants'][variant]['failed']}",
                             **{k: None for k, _, _ in METRICS}})
                write(rows)
                continue
            if deadline and step_s:  # the runs in training share the GPU: their step times add up
                sharing = sum((cal or {}).get("variants", {}).get(k[0], {}).get("step_s") or 0.0
                              for k, r in running.items() if r["stage"] == "train")
                finish = elapsed() + est_start + args.steps * (step_s + sharing) + max(evaluated or [60.0])
                if finish > deadline:
                    pending.remove(key)
                    why = f"not started: its estimate ({finish:.0f} s) passes the budget ({deadline:.0f} s)"
                    print(f"  {variant} seed {seed}: {why}", flush=True)
                    rows.append({"variant": variant, "seed": seed, "failed": why, **{k: None for k, _, _ in METRICS}})
                    write(rows)
                    continue
            pending.remove(key)
            name = _name(variant, seed)
            out = work / "runs" / name
            print(f"[{elapsed():.0f} s] train {variant} seed {seed}", flush=True)
            running[key] = {"stage": "train", "mem": need, "name": name, "out": out, "t": elapsed(),
                            "proc": start(train_command(args, sc, variant, seed, out), logs / f"{name}.train.log")}
        # Advance the running ones.
        for key, r in list(running.items()):
            variant, seed = key
            if r["stage"] == "wait_prep":
                if any(p.poll() is None for p in prep):
                    continue
                folder = work / "evaluate" / r["name"]
                folder.mkdir(parents=True, exist_ok=True)
                for f in ("mean_frame.npy", "mean_frame.json"):
                    if (shared / f).is_file():
                        shutil.copy2(shared / f, folder / f)
                print(f"[{elapsed():.0f} s] evaluate {variant} seed {seed}", flush=True)
                r.update(stage="evaluate", t=elapsed(), mem=_peak(None, variant) * 2,
                         proc=start(evaluate_command(args, sc, r["name"], r["out"], work),
                                    logs / f"{r['name']}.evaluate.log"))
                continue
            rc = r["proc"].poll()
            if rc is None:
                continue
            stage_log = logs / f"{r['name']}.{r['stage']}.log"
            if rc:
                tail = stage_log.read_text()[-1500:]
                print(f"  {variant} seed {seed}: {r['stage']} failed ({rc})", flush=True)
                rows.append({"variant": variant, "seed": seed, "failed": f"{r['stage']} exited {rc}: {tail}",
                             **{k: None for k, _, _ in METRICS}})
                del running[key]
                write(rows)
                continue
            if r["stage"] == "train":
                print(f"[{elapsed():.0f} s] trained {variant} seed {seed} ({elapsed() - r['t']:.0f} s)", flush=True)
                r.update(stage="wait_prep")
                continue
            evaluated.append(elapsed() - r["t"])
            print(f"[{elapsed():.0f} s] evaluated {variant} seed {seed} ({elapsed() - r['t']:.0f} s)", flush=True)
            rows.append(collect(variant, seed, r["out"], work / "evaluate" / r["name"], cal))
            del running[key]
            write(rows)
        if deadline and elapsed() > deadline:
            for key, r in running.items():
                if r["stage"] != "wait_prep":
                    r["proc"].kill()
                print(f"  {key[0]} seed {key[1]}: stopped at the budget during {r['stage']}", flush=True)
                why = f"stopped at the budget ({deadline:.0f} s) during {r['stage']}"
                if r["stage"] == "train":
                    rows.append({"variant": key[0], "seed": key[1], "failed": why, **{k: None for k, _, _ in METRICS}})
                else:  # trained: its step time, memory and losses stay in the table, unevaluated
                    rows.append({**collect(key[0], key[1], r["out"], work / "evaluate" / r["name"], cal),
                                 "note": f"not evaluated: {why}"})
            running.clear()
            write(rows)
            break
        time.sleep(1.0)
    for p in prep:
        if p.poll() is None:
            p.kill()
    return rows


# ----------------------------------------------------------------------------------------------
# Table, plot, files
# ----------------------------------------------------------------------------------------------


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and v == v else None  # NaN and "not computed" -> None


def table(rows: list[dict]) -> tuple[str, dict]:
    """Markdown table: mean and min..max over seeds per variant and metric."""
    agg: dict[str, dict] = {}
    metrics = [m for m in METRICS if m[0] not in OPTIONAL or any(_num(r.get(m[0])) is not None for r in rows)]
    lines = ["| variant | seeds | " + " | ".join(h for _, h, _ in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        cells, agg[variant] = [], {}
        for key, _, digits in metrics:
            vals = [x for x in (_num(r.get(key)) for r in mine) if x is not None]
            if not vals:
                cells.append("n/c")
                continue
            mean = statistics.fmean(vals)
            agg[variant][key] = {"mean": mean, "min": min(vals), "max": max(vals), "n": len(vals)}
            spread = f" ({min(vals):.{digits}f}..{max(vals):.{digits}f})" if len(vals) > 1 else ""
            cells.append(f"{mean:.{digits}f}{spread}")
        lines.append(f"| {variant} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), agg


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("miou", "probe mIoU"), ("box_recall", "box recall"), ("psnr", "PSNR (dB)"))
    if not any(_num(r.get(k)) is not None for r in rows for k, _ in panels):  # trained, not evaluated
        panels = (("peak_memory_gib", "peak memory (GiB)"), ("step_s", "step time alone (s)"),
                  ("step_s_shared", "step time, GPU shared (s)"))
    names = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]  # those run, in VARIANTS' order
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 2.2 * len(names) + 2), 3.6))
    for ax, (key, label) in zip(axes, panels):
        for i, variant in enumerate(names):
            vals = [_num(r.get(key)) for r in rows if r["variant"] == variant]
            vals = [v for v in vals if v is not None]
            if vals:
                mean = statistics.fmean(vals)
                ax.bar(i, mean, color="tab:gray" if variant == "flow only" else "tab:blue", alpha=0.6)
                ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
                ax.annotate(f"{mean:.{2 if key in ('psnr', 'peak_memory_gib') else 3}f}", (i, mean),
                            textcoords="offset points",
                            xytext=(0, 3), ha="center", fontsize=8)
        ref = [v for v in (_num(r.get(f"autoencoded_{key}")) for r in rows) if v is not None]
        if ref:  # the real frames through the VAE: what a perfect transformer could reach
            ax.axhline(statistics.fmean(ref), color="tab:red", ls="--", lw=1, label="real frames through the VAE")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=20 if len(names) > 5 else 0)
        ax.set_title(label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from chopgrad_core.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def pack(work: Path, dest: Path, tag: str) -> None:
    """The runs' logs, summaries, metrics and first mosaics in one archive (``--copy-to``)."""
    with tarfile.open(dest / f"ablation_{tag}_runs.tar.gz", "w:gz") as tar:
        for pattern in ("logs/*.log", "calibrate.json", "runs/*/summary.json", "runs/*/history.json",
                        "runs/*/loss.png", "evaluate/*/metrics.json", "evaluate/*/report.md", "evaluate/*/*.png",
                        "store.zarr/report.json"):
            for f in sorted(work.glob(pattern)):
                tar.add(f, arcname=str(f.relative_to(work)))
        for folder in sorted((work / "evaluate").glob("*/mosaics")):
            for f in sorted(folder.glob("*.png"))[:1]:
                tar.add(f, arcname=str(f.relative_to(work)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="cpu")
    p.add_argument("--store", default=None, help="clip store with a val split (default: the scenario's)")
    p.add_argument("--steps", default=None, help="steps per run, or auto (measure, then fit --budget)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="which, in the order to run them (default: the scenario's order, else all)")
    p.add_argument("--first-seed-only", nargs="*", default=[], choices=list(VARIANTS),
                   help="variants run with the first seed alone (e.g. those equal to another by construction)")
    p.add_argument("--work", default=None, help="runs and evaluations (default outputs/ablation/<scenario>)")
    p.add_argument("--lpips-weights", dest="lpips_weights", default=None)
    p.add_argument("--fid-weights", dest="fid_weights", default=None)
    p.add_argument("--fvd-weights", dest="fvd_weights", default=None)
    g = p.add_argument_group("h200 scenario: store, time budget, GPU sharing")
    g.add_argument("--build-store", action="store_true",
                   help="write the store (--store) from --logs without Ray (benchmarks/ablation_store.py) when missing")
    g.add_argument("--logs", default=None, help="--build-store: the sample logs (written there when missing)")
    g.add_argument("--store-scenes", type=int, default=None, help="--build-store: nuScenes scenes of the sample drive")
    g.add_argument("--store-image-size", type=int, nargs=2, default=None)
    g.add_argument("--store-clip-length", type=int, default=None)
    g.add_argument("--store-stride", type=int, default=None)
    g.add_argument("--val-scenes", type=int, default=None)
    g.add_argument("--store-workers", type=int, default=min(12, os.cpu_count() or 1))
    g.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole ablation (store included): no run starts that would pass it, "
                        "any still running at it is stopped; --steps auto fits the step count to it")
    g.add_argument("--max-steps", type=int, default=None, help="--steps auto: at most this many")
    g.add_argument("--calibration", default=None,
                   help="a calibration JSON measured earlier (benchmarks/ablation_calibrate.py) to use instead of "
                        "measuring again: the table's step times, the runs' memory, --steps auto")
    g.add_argument("--run-start-s", type=float, default=None,
                   help="seconds a run needs besides its steps (default: from the calibration)")
    g.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="runs share the device (default: the scenario's)")
    g.add_argument("--memory-gib", type=float, default=None,
                   help="device memory the parallel runs may use together (default: 90%% of the GPU's)")
    g.add_argument("--set", dest="train_set", nargs="+", default=[], help="extra training overrides (last wins)")
    g.add_argument("--evaluate-set", dest="evaluate_set", nargs="+", default=[], help="extra evaluation overrides")
    g.add_argument("--results", default=str(HERE / "results"), help="folder of the .md and .json")
    g.add_argument("--plot", default=None, help="the plot (default benchmarks/ablation_<scenario>.png)")
    g.add_argument("--copy-to", default=None, help="also copy the results there, with the runs' logs packed")
    g.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild the results from the runs under --work (e.g. copied back from a GPU machine)")
    g.add_argument("--machine", default=None, help="the machine named in the results (with --report-only)")
    g.add_argument("--torch-version", default=None, help="the torch version named in the results (with --report-only)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    sc = SCENARIOS[args.scenario]
    args.store = args.store or sc["store"]
    work = Path(args.work or f"outputs/ablation/{args.scenario}").resolve()
    info: dict = {}
    if args.build_store and not args.report_only and not (Path(args.store) / "zarr.json").is_file():
        import ablation_store

        b = dict(sc.get("build") or SCENARIOS["h200"]["build"])
        for key, value in (("scenes", args.store_scenes), ("image_size", args.store_image_size),
                           ("clip_length", args.store_clip_length), ("stride", args.store_stride),
                           ("val_scenes", args.val_scenes)):
            if value is not None:
                b[key] = value
        logs = Path(args.logs or work / "logs_sample")
        if not (logs / "drivegen_sample.json").is_file():
            ablation_store.write_logs(logs, b["scenes"], b["seed"], tuple(b["image_size"]))
        t_store = time.perf_counter()
        report = ablation_store.build_store(logs, Path(args.store), tuple(b["image_size"]), b["clip_length"],
                                            b["stride"], b["val_scenes"], args.store_workers)
        counts = ablation_store.check_store(Path(args.store), b["clip_length"], tuple(b["image_size"]))
        info["store_build"] = {**b, **counts, "seconds": round(time.perf_counter() - t_store, 1),
                         "clips_written": report["totals"]["clips_written"], "logs": str(logs)}
        print(f"[{time.perf_counter() - t0:.0f} s] store {args.store}: {counts} ({info['store_build']['seconds']} s)", flush=True)
    if not args.report_only and (not args.store or not (REPO / args.store / "zarr.json").is_file()
                                 and not (Path(args.store) / "zarr.json").is_file()):
        print(f"error: --store={args.store!r} is not a clip store; run `make train` (it writes "
              "datasets/train_clips.zarr), name one with --store, or pass --build-store", file=sys.stderr)
        return 2
    seeds = args.seeds if args.seeds is not None else sc["seeds"]
    variants = args.variants or sc.get("order") or list(VARIANTS)
    par = sc.get("parallel", False) if args.parallel is None else args.parallel
    deadline = args.budget - 10 if args.budget else None  # the last seconds write the results
    mem_cap = args.memory_gib
    cal = None
    steps = args.steps or sc["steps"]
    if args.calibration:  # measured earlier on the same machine: reused instead of measured again
        cal = json.loads(Path(args.calibration).read_text())
        info["calibration"] = {**cal, "source": args.calibration}
        if mem_cap is None and cal.get("total_memory_gib"):
            mem_cap = 0.9 * cal["total_memory_gib"]
    if str(steps) == "auto" and args.report_only:
        print("error: --report-only needs the runs' --steps", file=sys.stderr)
        return 2
    if str(steps) == "auto" and cal is None:
        cal_json = work / "calibrate.json"
        cal_cmd = [sys.executable, str(HERE / "ablation_calibrate.py"), "--json", str(cal_json), "--warmup", "1",
                   "--steps", "2", "--variants", *variants, "--", f"data.store={args.store}", f"trainer.out={work / 'calibrate'}",
                   "trainer.overwrite=true", "trainer.tensorboard=false", "trainer.sample_steps=0",
                   *sc["train"], *args.train_set]
        print(f"[{time.perf_counter() - t0:.0f} s] calibrating", flush=True)
        run(cal_cmd, work / "logs" / "calibrate.log")
        cal = json.loads(cal_json.read_text())
        if mem_cap is None and cal.get("total_memory_gib"):
            mem_cap = 0.9 * cal["total_memory_gib"]
    if str(steps) == "auto":
        from drivegen.data.dataset import ClipDataset

        n_val = len(ClipDataset(Path(args.store), split="val", datasets=["nuscenes"]))
        left = (args.budget or 1e9) - (time.perf_counter() - t0)
        steps, est = plan_steps(cal, variants, left, n_val, sc.get("min_steps", 20),
                                args.max_steps or sc.get("max_steps", 600), mem_cap if par else None,
                                args.run_start_s)
        info.setdefault("calibration", cal)
        info["plan"] = {**est, "steps": steps, "left_s": round(left, 1), "memory_cap_gib": mem_cap}
        print(f"[{time.perf_counter() - t0:.0f} s] calibrated: {json.dumps(cal['variants'])}; {steps} steps "
              f"({json.dumps(est)})", flush=True)
    args.steps = int(steps)
    todo = [(v, s) for v in variants for s in (seeds[:1] if v in args.first_seed_only else seeds)]
    import torch

    from hardware import cpu_model

    if args.machine:
        machine = args.machine
    elif cal is not None and not args.calibration and cal.get("device", "cpu") != "cpu":  # no CUDA context here
        machine = cal["device"]
    else:
        machine = (torch.cuda.get_device_name() if args.scenario != "cpu" and torch.cuda.is_available()
                   else f"{cpu_model()}, {os.cpu_count()} cores")
    torch_version = args.torch_version or torch.__version__
    stamp = dt.date.today().isoformat()
    results = Path(args.results)
    plot_path = Path(args.plot) if args.plot else HERE / f"ablation_{args.scenario}.png"

    def write(rows: list[dict]) -> str:
        ok = [r for r in rows if "failed" not in r]
        md, agg = table(ok)
        shared = (" Runs shared the device (started together where their calibrated peaks fitted); `step s`: "
                  "median step measured alone by the calibration, `step s (GPU shared)`: the run's own median."
                  if cal is not None and par else "")
        if args.calibration:
            shared += f" Calibration reused from `{args.calibration}` (measured alone earlier on the same machine type)."
        rebuilt = (f" Rows rebuilt with `--report-only` from the runs in `{args.work}` (their summaries and "
                   "evaluations); the machine above is `--machine`'s." if args.report_only else "")
        head = (f"# ChopGrad ablation, scenario {args.scenario}\n\n{machine}; torch {torch_version}; store "
                f"{args.store}; {args.steps} steps; seeds {seeds}; evaluation on the val split (sampler seed 0); "
                f"mean (min..max) over seeds; n/c: not computed (no feature weights given, or not evaluated)."
                f"{shared}{rebuilt} "
                f"Command: `python {shlex.join(sys.argv)}`; {time.perf_counter() - t0:.0f} s.\n\n")
        failed = [f"- {r['variant']} seed {r['seed']}: failed: {r['failed'].splitlines()[0]}" for r in rows
                  if "failed" in r]
        failed += [f"- {r['variant']} seed {r['seed']}: {r['note']}" for r in rows if r.get("note")]
        text = head + md + "\n" + ("\n" + "\n".join(failed) + "\n" if failed else "")
        write_text(results / f"ablation_{args.scenario}_{stamp}.md", text)
        write_json(results / f"ablation_{args.scenario}_{stamp}.json",
                   {"rows": rows, "aggregate": agg, "machine": machine, "torch": torch_version,
                    "steps": args.steps, "seeds": seeds,
                    "store": args.store, "seconds": round(time.perf_counter() - t0, 1), **info})
        if ok:
            plot(ok, plot_path, f"ChopGrad ablation ({args.scenario}, {machine}, {args.steps} steps, seeds {seeds})")
        if args.copy_to:  # after every finished run: what a stopped job leaves is still there
            dest = Path(args.copy_to)
            dest.mkdir(parents=True, exist_ok=True)
            for f in (results / f"ablation_{args.scenario}_{stamp}.md",
                      results / f"ablation_{args.scenario}_{stamp}.json", plot_path):
                if f.is_file():
                    shutil.copy2(f, dest / f.name)
        return text

    if args.report_only:
        rows = []
        for variant, seed in todo:
            name = _name(variant, seed)
            out, ev = work / "runs" / name, work / "evaluate" / name
            if (out / "summary.json").is_file():
                row = collect(variant, seed, out, ev, cal if par else None)
                rows.append({**row, "note": "trained, not evaluated"} if not row["evaluated"] else row)
            else:
                rows.append({"variant": variant, "seed": seed, "failed": f"no run in {out}",
                             **{k: None for k, _, _ in METRICS}})
    elif par:
        rows = parallel(args, sc, todo, work, cal, t0, deadline, mem_cap, write)
    else:
        rows, durations = [], []
        for i, (variant, seed) in enumerate(todo):
            elapsed = time.perf_counter() - t0
            if deadline and durations and elapsed + max(durations) > deadline:
                why = f"not started: another run ({max(durations):.0f} s) would pass the budget"
                print(f"[{i + 1}/{len(todo)}] {variant} seed {seed}: {why}", flush=True)
                rows.append({"variant": variant, "seed": seed, "failed": why, **{k: None for k, _, _ in METRICS}})
                continue
            print(f"[{i + 1}/{len(todo)}] {variant} seed {seed} ({elapsed:.0f} s)", flush=True)
            t_run = time.perf_counter()
            try:
                rows.append(one(args, sc, variant, seed, work))
            except RuntimeError as exc:  # one failing run (out of memory at full backprop) never stops the rest
                print(f"  failed: {str(exc).splitlines()[0]}", flush=True)
                rows.append({"variant": variant, "seed": seed, "failed": str(exc)[:500],
                             **{k: None for k, _, _ in METRICS}})
            durations.append(time.perf_counter() - t_run)
            if args.budget:
                write(rows)
    text = write(rows)
    if args.copy_to and not args.report_only:
        pack(work, Path(args.copy_to), args.scenario)
    print(text)
    ok = [r for r in rows if "failed" not in r]
    return 1 if rows and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
