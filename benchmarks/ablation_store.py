"""The clip store of the ablation's ``h200`` scenario, built without Ray.

Why this file exists: the GPU test machines have no Ray (and no registry to install it from), and
a 256x448, 33-frame, six-camera store is hundreds of MB, far too large to carry there. So the store
is written on the machine itself by ``drivegen.data.preprocess.driver.run`` unchanged (planning,
the clips' attrs with each log's ``split``, consolidation, ``report.json`` and the summary are all
the driver's), with its two Ray calls replaced for this one call: ``init_ray`` returns a stand-in
offering the two functions the driver uses (``wait``, ``get``), and ``actors`` starts each
``ClipWorker`` (the plain class that ``drivegen.workpool.actors`` wraps in Ray) in a process of its
own (a one-process ``ProcessPoolExecutor``), called as Ray calls an actor (``worker.plan.remote``).
What Ray adds on top (restarts of dead actors, cluster placement) is not needed for a one-machine
benchmark store; a worker that dies fails its log, and the report says so.

    python benchmarks/ablation_store.py --logs outputs/ablation/h200_logs --out outputs/ablation/h200/store.zarr
    python benchmarks/ablation_store.py --logs /tmp/logs --write-logs --scenes 3 --image-size 64 112 \
        --clip-length 9 --stride 17 --out /tmp/store.zarr        # a tiny one (CPU check)

``--write-logs`` writes the sample logs first (``python -m drivegen.data.sample_data``, 43 frames per
camera per nuScenes scene); the last ``--val-scenes`` nuScenes scenes of the drive are the val split
(``split.val_logs``), as ``make train`` holds out the last of its three. Only the nuScenes logs go
into the store (the ablation trains on one rig, ``data.datasets=[nuscenes]``; the sample's Waymo
segment has 25 frames, fewer than a 33-frame clip).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]

_worker = None  # the ClipWorker of a worker process


def _start(cls, args) -> None:
    global _worker
    _worker = cls(*args)


def _call(method: str, args: tuple):
    return getattr(_worker, method)(*args)


class _Method:
    def __init__(self, pool: cf.ProcessPoolExecutor, name: str):
        self._pool, self._name = pool, name

    def remote(self, *args) -> cf.Future:
        return self._pool.submit(_call, self._name, args)


class _Actor:
    """One ClipWorker in a process of its own, called as a Ray actor is (``actor.plan.remote(ref)``)."""

    def __init__(self, cls: type, args: tuple):
        # spawn: a fresh interpreter (the driver's process may hold zarr's event-loop thread).
        self.pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                                           initargs=(cls, args))

    def __getattr__(self, name: str) -> _Method:
        return _Method(self.pool, name)


class _LocalRay:
    """What the driver uses of the ``ray`` module, over ``concurrent.futures`` futures."""

    @staticmethod
    def wait(futures: list, num_returns: int = 1):
        done, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
        ready = [f for f in futures if f in done][:num_returns]
        return ready, [f for f in futures if f not in ready]

    @staticmethod
    def get(future: cf.Future):
        return future.result()


@contextlib.contextmanager
def _local_actors(cls: type, count: int, config, *args, resources=None):
    pool = [_Actor(cls, args) for _ in range(count)]
    try:
        yield pool
    finally:
        for actor in pool:
            actor.pool.shutdown(wait=True, cancel_futures=True)


def write_logs(logs: Path, scenes: int, seed: int, image_size: tuple[int, int]) -> None:
    """``python -m drivegen.data.sample_data`` (skipped by it when ``logs`` already holds the same sample)."""
    cmd = [sys.executable, "-m", "drivegen.data.sample_data", "--out", str(logs), "--seed", str(seed),
           "--nuscenes-scenes", str(scenes), "--image-size", *map(str, image_size)]
    subprocess.run(cmd, cwd=REPO, check=True)


def build_store(logs: Path, out: Path, image_size: tuple[int, int], clip_length: int, stride: int, val_scenes: int,
                workers: int, overrides: tuple[str, ...] = ()) -> dict:
    """Preprocess the nuScenes logs under ``logs`` into ``out`` with the driver, in local processes.
    Returns the driver's report (also ``out/report.json``)."""
    from drivegen.data.ingest import discover_logs
    from drivegen.data.preprocess import driver
    from drivegen.data.preprocess.config import load_config

    refs = [r for r in discover_logs(str(logs)) if r.kind == "nuscenes"]
    names = sorted(r.name for r in refs)
    if len(names) <= val_scenes:
        raise SystemExit(f"error: {len(names)} nuScenes scenes under {logs}; --val-scenes={val_scenes} leaves no train split")
    val = names[len(names) - val_scenes:]
    # The store the trainer would write for this run (drivegen.train.trainer.ensure_store: no BEV raster),
    # from configs/preprocess.yaml with the same keys as `python -m drivegen.preprocess`.
    config = load_config([f"input_root={logs}", f"out={out}", f"conditions.image_size=[{image_size[0]},{image_size[1]}]",
                          "conditions.bev=false", f"clip.length={clip_length}", f"clip.stride={stride}",
                          f"split.val_logs=[{','.join(val)}]", f"ray.num_workers={workers}", "progress=false",
                          *overrides])
    with mock.patch.object(driver, "init_ray", lambda _config: _LocalRay), \
            mock.patch.object(driver, "actors", _local_actors), \
            mock.patch.object(driver, "unavailable", lambda exc: False):  # no Ray: no actor is "unreachable for now"
        return driver.run(config, refs)


def check_store(out: Path, clip_length: int, image_size: tuple[int, int]) -> dict[str, int]:
    """Clips per split, read through ClipDataset as training and evaluation read them."""
    from drivegen.data.dataset import ClipDataset

    counts = {}
    for split in ("train", "val"):
        ds = ClipDataset(out, clip_length=clip_length, image_size=image_size, datasets=["nuscenes"], split=split)
        counts[split] = len(ds)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", required=True, help="the sample logs (written there with --write-logs)")
    p.add_argument("--write-logs", action="store_true", help="write the sample logs first (python -m drivegen.data.sample_data)")
    p.add_argument("--scenes", type=int, default=7, help="--write-logs: nuScenes scenes of the drive (43 frames each)")
    p.add_argument("--seed", type=int, default=0, help="--write-logs: the sample world's seed")
    p.add_argument("--out", required=True, help="the clip store to write")
    p.add_argument("--image-size", type=int, nargs=2, default=[256, 448])
    p.add_argument("--clip-length", type=int, default=33)
    p.add_argument("--stride", type=int, default=10, help="clip.stride (43-frame scenes, 33-frame clips: starts 0 and 10)")
    p.add_argument("--val-scenes", type=int, default=1, help="the last N scenes of the drive form the val split")
    p.add_argument("--workers", type=int, default=8, help="ClipWorker processes")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    logs, out, size = Path(args.logs), Path(args.out), tuple(args.image_size)
    if args.write_logs:
        write_logs(logs, args.scenes, args.seed, size)
        print(f"ablation_store: sample logs in {logs} ({time.perf_counter() - t0:.1f} s)", flush=True)
    t1 = time.perf_counter()
    report = build_store(logs, out, size, args.clip_length, args.stride, args.val_scenes, args.workers)
    counts = check_store(out, args.clip_length, size)
    print(f"ablation_store: {out}: {counts['train']} train clips, {counts['val']} val clips "
          f"({report['totals']['clips_written']} written in {time.perf_counter() - t1:.1f} s)", flush=True)
    return 0 if report["totals"]["logs_failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
