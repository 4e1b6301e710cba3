"""Logs for the preprocessing tests: the project's sample logs (drivegen.data.sample_data), variants of
them (a corrupt copy, a Waymo segment stripped of its images), and an opener that kills its
worker process once. Imported by Ray workers too (the tests put this folder on PYTHONPATH).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np



# -- real sample logs ------------------------------------------------------------------------


def sample_logs(root: Path, good: Path | None = None) -> dict:
    """Sample logs under `good` (default root/good; written there when missing), plus root/bad (a
    corrupt Waymo copy) and root/stripped (a Waymo segment without images). Returns {"good": [...],
    "corrupt": ref, "stripped": ref, "opener": None}."""
    from drivegen.data.ingest import discover_logs
    from drivegen.data.ingest.tfrecord import iter_records, write_records
    from drivegen.data.sample_data import generate_sample_logs

    good = root / "good" if good is None else Path(good)
    generate_sample_logs(good, nuscenes_scenes=1)  # the sample logs, unless good holds them already
    refs = discover_logs(good)
    waymo = next(r for r in refs if r.kind == "waymo")
    # A corrupt copy: same segment, another name, bytes flipped in the middle of the file.
    bad_dir = root / "bad"
    bad_dir.mkdir(parents=True, exist_ok=True)
    data = bytearray(Path(waymo.path).read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    (bad_dir / "segment-corrupt-copy_with_camera_labels.tfrecord").write_bytes(bytes(data))
    # A conditions-only segment: the same records with every camera image removed.
    from waymo_open_dataset import dataset_pb2

    stripped_dir = root / "stripped"
    stripped_dir.mkdir(parents=True, exist_ok=True)
    payloads = []
    for _, payload in iter_records(waymo.path):
        frame = dataset_pb2.Frame.FromString(payload)
        del frame.images[:]
        payloads.append(frame.SerializeToString())
    with open(stripped_dir / "segment-no-images_with_camera_labels.tfrecord", "wb") as fh:
        write_records(fh, payloads)
    return {
        "good": refs,
        "corrupt": discover_logs(bad_dir)[0],
        "stripped": discover_logs(stripped_dir)[0],
        "opener": None,
    }


# -- fault injection -------------------------------------------------------------------------


class _CrashOnce:
    """Wraps a reader: the `after`-th image read kills the process if `marker` exists (once)."""

    def __init__(self, reader, marker: str, after: int):
        self._reader, self._marker, self._after, self._reads = reader, marker, after, 0
        self.ref, self.scene, self.has_images = reader.ref, reader.scene, reader.has_images
        self.dropped = getattr(reader, "dropped", None)  # what the reader left out, reported as usual

    def image(self, camera: str, frame: int) -> np.ndarray:
        self._reads += 1
        if self._reads >= self._after and os.path.exists(self._marker):
            os.remove(self._marker)
            os._exit(1)  # the worker process dies mid-clip, as on an OOM kill or a node loss
        return self._reader.image(camera, frame)


def crash_once_opener(ref, marker: str, after: int, inner=None):
    """open_log (or `inner`), with a reader that kills its worker once; use with functools.partial."""
    if inner is None:
        from drivegen.data.ingest import open_log as inner
    return _CrashOnce(inner(ref), marker, after)

