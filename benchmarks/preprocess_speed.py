"""Benchmark: camera-frames per second of drivegen.preprocess with 1 and 2 Ray workers.

Scenario (issue 4): the sample logs (`python -m drivegen.data.sample_data`: one nuScenes scene, 43
frames x 6 cameras, and one Waymo segment, 25 frames x 5 cameras) preprocessed at 256 x 448 with
every condition (layout, control, box tokens, Plücker rays, BEV) and the images, clips of 8
frames every 2 frames (overlapping, so that there is enough work to time: 27 clips, 1224
camera-frames), into a fresh store each round. Ray local, started once with 2 CPUs.

Named scenarios: `workers_1`, `workers_2` (ray.num_workers). Rounds are interleaved; the best
round is the figure, the median beside it. Per scenario:
- throughput: camera-frames written / wall time of planning and writing (actors started; opening
  the logs included, also a second opening when a worker joins a log at the end);
- per_worker: camera-frames / time workers spent in write_clip minus log opening;
- end_to_end: camera-frames / the whole `run` (actor start, planning, consolidation included);
- per_worker_cpu: camera-frames / CPU time of the workers (what one worker does with a core of
  its own), and core_share: the share of a core each worker actually got. On a shared machine
  (other jobs; Ray runs workers at nice 15) these tell contention from pipeline overhead.
Targets: per_worker >= 50 camera-frames/s; workers_2 throughput >= 1.7x workers_1.

    python benchmarks/preprocess_speed.py [--rounds 3] [--logs datasets/sample] [--out benchmarks/results]

Writes benchmarks/results/preprocess_<cpu>_<date>.json and prints Markdown table rows.
"""

from __future__ import annotations

import os

# One thread per worker process: two workers on two cores must not oversubscribe them.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import datetime
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hardware import cpu_model  # noqa: E402  (benchmarks/hardware.py, beside this script)

from drivegen.data.preprocess import load_config, run  # noqa: E402

SCENARIOS = {"workers_1": 1, "workers_2": 2}
OVERRIDES = ["conditions.image_size=[256,448]", "clip.length=8", "clip.stride=2", "progress=false"]


def one_round(logs: str, workers: int, scratch: Path) -> dict[str, float]:
    out = scratch / f"w{workers}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    config = load_config([f"input_root={logs}", f"out={out}", f"ray.num_workers={workers}", *OVERRIDES])
    report = run(config)
    assert not report["failed"], report["failed"]
    n, t = report["totals"]["camera_frames_written"], report["timing"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "camera_frames": n,
        "throughput": n / t["loop_s"],
        "per_worker": n / (t["worker_s"] - t["worker_open_s"]),
        "end_to_end": n / t["wall_s"],
        # Per worker on CPU time: what a worker does with a whole core (contention factored out).
        "per_worker_cpu": n / t["worker_cpu_s"],
        # Share of a core each worker got during the write phase (1.0 = a core of its own).
        "core_share": t["worker_cpu_s"] / (t["loop_s"] * workers),
        "loop_s": t["loop_s"],
        "worker_open_s": t["worker_open_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--logs", default="datasets/sample")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    import ray

    if not Path(args.logs).is_dir():
        from drivegen.data.sample_data import generate_sample_logs

        generate_sample_logs(args.logs)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    load_before = os.getloadavg()
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="preprocess-bench-") as scratch:
        for r in range(args.rounds):
            for name, workers in SCENARIOS.items():
                result = one_round(args.logs, workers, Path(scratch))
                rounds[name].append(result)
                print(f"round {r} {name}: {result['throughput']:.1f} camera-frames/s "
                      f"(per worker {result['per_worker']:.1f})", file=sys.stderr)
    ray.shutdown()

    cpu, date = cpu_model(), datetime.date.today().isoformat()
    summary = {}
    for name, results in rounds.items():
        summary[name] = {
            key: {"best": max(x[key] for x in results), "median": statistics.median(x[key] for x in results)}
            for key in ("throughput", "per_worker", "end_to_end", "per_worker_cpu", "core_share")
        }
    scaling = summary["workers_2"]["throughput"]["best"] / summary["workers_1"]["throughput"]["best"]
    record = {
        "scenario": "sample logs, 256x448, all conditions + images, clip 8 stride 2",
        "overrides": OVERRIDES,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "date": date,
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rounds": rounds,
        "summary": summary,
        "scaling_2_over_1": scaling,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40] or "cpu"
    path = out / f"preprocess_{slug}_{date}.json"
    path.write_text(json.dumps(record, indent=2))
    print("| scenario | camera-frames/s (best) | median | per worker (best) | per worker, CPU time | "
          "core share (median) | end to end (best) | CPU | date |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['throughput']['best']:.1f} | {s['throughput']['median']:.1f} | "
              f"{s['per_worker']['best']:.1f} | {s['per_worker_cpu']['best']:.1f} | {s['core_share']['median']:.2f} | "
              f"{s['end_to_end']['best']:.1f} | {cpu} | {date} |")
    print(f"2 workers / 1 worker: {scaling:.2f}x; raw numbers: {path}")


if __name__ == "__main__":
    main()
