"""Step time and peak memory of each ablation variant, measured in one process before the runs, so
that ``benchmarks/ablation.py --steps auto`` can choose a step count that fits its time budget.

One ``drivegen.train.trainer.Trainer`` is built from the scenario's training overrides (the same
model, data and trainer settings as the runs), two train clips are prepared once, and then, per
variant, the Trainer's own ``train_step`` runs ``--warmup`` steps and ``--steps`` timed steps with
that variant's ``chopgrad.*`` / ``objective.*`` settings (what ``losses`` reads on every call). On
CUDA the peak is ``max_memory_allocated`` over the variant's steps, reset between variants; the
variants run one after another in this process, alone on the device: these are the step times the
ablation's table reports (its training runs may share the device with each other). Also measured:
the Trainer's start, preparing one clip (read from the store and encoded), and one sampler step
(what evaluation repeats: 2 x 20 per val clip).

    python benchmarks/ablation_calibrate.py --json out.json --variants "D=1" "flow only" -- trainer.device=cpu ...
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="training overrides (key=value), after --")
    args = p.parse_args(argv)

    import torch

    from ablation import VARIANTS
    from chopgrad_core.atomic import write_json
    from drivegen.config import compose
    from drivegen.model.sampler import sample_latents
    from drivegen.train.config import TrainConfig
    from drivegen.train.trainer import Trainer

    out: dict = {"variants": {}}
    cfg = compose(TrainConfig, "train", args.overrides)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    cuda = trainer.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(trainer.device)

    out["import_s"] = round(t0 - t_start, 2)
    out["init_s"] = round(time.perf_counter() - t0, 2)
    out["train_clips"] = len(trainer.data)
    prepared, times = [], []
    for i in range(min(2, len(trainer.data))):
        t = time.perf_counter()
        prepared.append(trainer.prepared([i]))
        sync()
        times.append(time.perf_counter() - t)
    out["prepare_s"] = round(max(times), 3)
    batches = itertools.cycle([{"prepared": item} for item in prepared])
    step = 0
    for variant in args.variants:
        vcfg = compose(TrainConfig, "train", [*args.overrides, *VARIANTS[variant]])
        trainer.cfg = dataclasses.replace(trainer.cfg, chopgrad=vcfg.chopgrad, objective=vcfg.objective)
        row: dict = {}
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(trainer.device)
            for _ in range(args.warmup):
                trainer.train_step(batches, step)
                step += 1
            sync()
            walls = []
            for _ in range(args.steps):
                t = time.perf_counter()
                trainer.train_step(batches, step)
                sync()
                walls.append(time.perf_counter() - t)
                step += 1
            row["step_s"] = round(sorted(walls)[len(walls) // 2], 4)
            row["step_s_all"] = [round(w, 4) for w in walls]
            if cuda:
                row["peak_gib"] = round(torch.cuda.max_memory_allocated(trainer.device) / 2**30, 3)
        except torch.OutOfMemoryError as exc:
            row["failed"] = f"out of memory: {str(exc).splitlines()[0][:200]}"
            trainer.opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.empty_cache()
        out["variants"][variant] = row
        print(f"calibrate: {variant}: {row}", flush=True)
    # One sampler step (evaluation runs 20 per method and clip, two sampled methods).
    x0, frames, control, cond = prepared[0]
    trainer.model.eval()
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=cuda):
        sample_latents(trainer.model, control, cond, tuple(x0.shape), tuple(frames.shape[-2:]), steps=1, seed=0)
        sync()
        t = time.perf_counter()
        sample_latents(trainer.model, control, cond, tuple(x0.shape), tuple(frames.shape[-2:]), steps=3, seed=0)
        sync()
    out["sampler_step_s"] = round((time.perf_counter() - t) / 3, 4)
    out["device"] = torch.cuda.get_device_name(trainer.device) if cuda else "cpu"
    if cuda:
        out["total_memory_gib"] = round(torch.cuda.get_device_properties(trainer.device).total_memory / 2**30, 1)
    out["parameters_m"] = round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2)
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    write_json(Path(args.json), out)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
