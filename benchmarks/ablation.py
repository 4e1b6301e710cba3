"""Does the ChopGrad pixel loss help? The same model, data, steps and seeds trained five ways, each
scored by ``python -m drivegen.evaluate`` on the val split.

Variants (overrides on top of the scenario's training command):

- ``flow only``: ``objective.pixel_weight=0`` (no decoder in the loop);
- ``D=0`` / ``D=1`` / ``D=2``: the ChopGrad pixel loss, sliding window of D earlier frame groups
  (``chopgrad.mode=sliding chopgrad.window=D``);
- ``full``: the pixel loss with plain backprop through the whole decoder (``chopgrad.mode=full``),
  where it fits.

Each (variant, seed) is one ``python -m drivegen.train`` process (its ``summary.json`` gives the
median step time and the peak memory: CUDA's max allocated, or the process's peak RSS on the CPU)
and one ``python -m drivegen.evaluate`` (``mode=local``; the layout probe is trained once per store
and shared; the sampler's seed is the evaluation's, the same for every run). The table gives the
mean and the spread (min..max) over seeds of probe mIoU, box recall, PSNR, LPIPS and FVD (the last
two only with ``--lpips-weights`` / ``--fvd-weights``: local files, nothing downloads), peak memory
and step time.

Scenarios (``--scenario``):

- ``cpu``: the embedded default (``make train``'s settings: tiny model, fitted sample VAE, 64x112,
  6 cameras, 5 frames, 150 steps) on the store ``make train`` writes, seeds 0 1 2.
- ``h200``: one GPU, the 1.3B-shaped Wan transformer trained from scratch is too slow to learn in
  minutes, so a mid-size one (8 layers, width 512) at 256x448, 6 cameras, 33 frames, 600 steps,
  bf16; needs a store at that size (``--store``, e.g. ``python -m drivegen.preprocess
  conditions.image_size=[256,448] clip.length=33 out=...``). Not run yet: see RESULTS.md.

Writes ``benchmarks/results/ablation_<scenario>_<date>.{md,json}``, the plot
``benchmarks/ablation_<scenario>.png`` and the runs under ``--work`` (default
``outputs/ablation/<scenario>``); a (variant, seed) whose evaluation is there is not run again.

    python benchmarks/ablation.py --scenario cpu                       # after make train (its store)
    python benchmarks/ablation.py --scenario cpu --seeds 0 --steps 50  # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
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
}

SCENARIOS = {
    "cpu": dict(store="datasets/train_clips.zarr", steps=150, seeds=[0, 1, 2], train=["trainer.device=cpu"],
                evaluate=["device=cpu"]),
    "h200": dict(store=None, steps=600, seeds=[0, 1, 2],
                 train=["trainer=gpu", "model.num_layers=8", "model.num_attention_heads=8", "model.attention_head_dim=64",
                        "model.ffn_dim=2048", "model.text_dim=512", "data.image_size=[256,448]", "data.clip_length=33",
                        "trainer.gradient_checkpointing=true"],
                 evaluate=["device=cuda"]),
}

METRICS = (("miou", "probe mIoU", 3), ("box_recall", "box recall", 3), ("psnr", "PSNR", 2), ("lpips", "LPIPS", 3),
           ("fvd", "FVD", 1), ("peak_memory_gib", "peak GiB", 2), ("step_s", "step s", 3))


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (log {log}):\n{tail}")


def one(args, scenario: dict, variant: str, seed: int, work: Path) -> dict:
    """Train and evaluate one (variant, seed); reuse its results when both are already there."""
    name = f"{variant.replace(' ', '_').replace('=', '')}_seed{seed}"
    out, ev = work / "runs" / name, work / "evaluate" / name
    if not (ev / "metrics.json").is_file():
        train = [sys.executable, "-m", "drivegen.train", f"data.store={args.store}", f"trainer.out={out}",
                 f"trainer.steps={args.steps}", f"trainer.seed={seed}", "trainer.overwrite=true",
                 "trainer.tensorboard=false", "trainer.sample_steps=0", *scenario["train"], *VARIANTS[variant]]
        run(train, work / "logs" / f"{name}.train.log")
        evaluate = [sys.executable, "-m", "drivegen.evaluate", f"checkpoint={out}", f"out={work / 'evaluate'}",
                    f"run={name}", "mode=local", "progress=false", *scenario["evaluate"]]
        for key in ("lpips_weights", "fid_weights", "fvd_weights"):
            if getattr(args, key):
                evaluate.append(f"{key}={getattr(args, key)}")
        run(evaluate, work / "logs" / f"{name}.evaluate.log")
    metrics = json.loads((ev / "metrics.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    g = metrics["methods"]["generated"]
    return {"variant": variant, "seed": seed, "miou": g["miou"], "box_recall": g["box_recall"], "psnr": g["psnr"],
            "lpips": g.get("lpips"), "fvd": g.get("fvd"), "peak_memory_gib": summary.get("peak_memory_gib"),
            "step_s": summary.get("step_s_median"), "flow_last": summary.get("flow_last"),
            "ceiling": metrics["methods"]["ground_truth"]["miou"],
            "autoencoded_miou": metrics["methods"].get("autoencoded", {}).get("miou")}


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and v == v else None  # NaN and "not computed" -> None


def table(rows: list[dict]) -> tuple[str, dict]:
    """Markdown table: mean and min..max over seeds per variant and metric."""
    agg: dict[str, dict] = {}
    lines = ["| variant | seeds | " + " | ".join(h for _, h, _ in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        cells, agg[variant] = [], {}
        for key, _, digits in METRICS:
            vals = [x for x in (_num(r[key]) for r in mine) if x is not None]
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

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, label) in zip(axes, (("miou", "probe mIoU"), ("box_recall", "box recall"), ("psnr", "PSNR (dB)"))):
        for i, variant in enumerate(VARIANTS):
            vals = [_num(r[key]) for r in rows if r["variant"] == variant]
            vals = [v for v in vals if v is not None]
            if vals:
                ax.bar(i, statistics.fmean(vals), color="tab:gray" if variant == "flow only" else "tab:blue", alpha=0.6)
                ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(VARIANTS)), list(VARIANTS))
        ax.set_title(label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from chopgrad_core.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="cpu")
    p.add_argument("--store", default=None, help="clip store with a val split (default: the scenario's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--first-seed-only", nargs="*", default=[], choices=list(VARIANTS),
                   help="variants run with the first seed alone (e.g. those equal to another by construction)")
    p.add_argument("--work", default=None, help="runs and evaluations (default outputs/ablation/<scenario>)")
    p.add_argument("--lpips-weights", dest="lpips_weights", default=None)
    p.add_argument("--fid-weights", dest="fid_weights", default=None)
    p.add_argument("--fvd-weights", dest="fvd_weights", default=None)
    args = p.parse_args(argv)
    sc = SCENARIOS[args.scenario]
    args.store = args.store or sc["store"]
    if not args.store or not (REPO / args.store / "zarr.json").is_file() and not (Path(args.store) / "zarr.json").is_file():
        print(f"error: --store={args.store!r} is not a clip store; run `make train` (it writes "
              "datasets/train_clips.zarr) or name one with --store", file=sys.stderr)
        return 2
    args.steps = args.steps or sc["steps"]
    seeds = args.seeds if args.seeds is not None else sc["seeds"]
    work = Path(args.work or f"outputs/ablation/{args.scenario}").resolve()
    rows, t0 = [], time.perf_counter()
    todo = [(v, s) for v in args.variants for s in (seeds[:1] if v in args.first_seed_only else seeds)]
    for i, (variant, seed) in enumerate(todo):
        print(f"[{i + 1}/{len(todo)}] {variant} seed {seed} ({time.perf_counter() - t0:.0f} s)", flush=True)
        try:
            rows.append(one(args, sc, variant, seed, work))
        except RuntimeError as exc:  # one failing run (out of memory at full backprop) never stops the rest
            print(f"  failed: {str(exc).splitlines()[0]}", flush=True)
            rows.append({"variant": variant, "seed": seed, "failed": str(exc)[:500],
                         **{k: None for k, _, _ in METRICS}})
    ok = [r for r in rows if "failed" not in r]
    md, agg = table(ok)
    import torch

    from hardware import cpu_model

    machine = (torch.cuda.get_device_name() if args.scenario != "cpu" and torch.cuda.is_available()
               else f"{cpu_model()}, {os.cpu_count()} cores")
    stamp = dt.date.today().isoformat()
    head = (f"# ChopGrad ablation, scenario {args.scenario}\n\n{machine}; torch {torch.__version__}; store "
            f"{args.store}; {args.steps} steps; seeds {seeds}; evaluation on the val split (sampler seed 0); "
            f"mean (min..max) over seeds; n/c: not computed (no feature weights given). "
            f"Command: `python {' '.join(sys.argv)}`; {time.perf_counter() - t0:.0f} s.\n\n")
    failed = [f"- {r['variant']} seed {r['seed']}: failed: {r['failed'].splitlines()[0]}" for r in rows if "failed" in r]
    text = head + md + "\n" + ("\n" + "\n".join(failed) + "\n" if failed else "")
    results = HERE / "results"
    write_text(results / f"ablation_{args.scenario}_{stamp}.md", text)
    write_json(results / f"ablation_{args.scenario}_{stamp}.json", {"rows": rows, "aggregate": agg, "machine": machine,
                                                                  "steps": args.steps, "seeds": seeds, "store": args.store})
    if ok:
        plot(ok, HERE / f"ablation_{args.scenario}.png", f"ChopGrad ablation ({args.scenario}, {machine}, "
             f"{args.steps} steps, seeds {seeds})")
    print(text)
    return 1 if failed and not ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
