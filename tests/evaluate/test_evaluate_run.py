"""python -m drivegen.evaluate's run: every val clip generated and scored against three baselines, the
ground truth scoring PSNR inf / FID ~0 / FVD ~0 / the probe's own mIoU; files written; a rerun skips
finished clips and the same seed gives the same numbers; a missing weights file names its key."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from drivegen.errors import WeightsFileError
from drivegen.evaluate.config import EvaluateConfig, SamplerConfig
from evaluate_shared import PROBE, WAYMO_LOG
from feature_nets import save_feature_nets

CLIPS = 3  # of the Waymo segment's 5 val clips


@pytest.fixture(scope="module")
def evaluated(world, tmp_path_factory):
    from drivegen.evaluate.run import run

    fid, fvd = save_feature_nets(tmp_path_factory.mktemp("nets"))
    cfg = EvaluateConfig(checkpoint=str(world.checkpoint), datasets=["waymo"], max_clips=CLIPS, mode="local",
                         progress=False,
                         out=str(world.root / "evaluate"), run="run", sampler=SamplerConfig(steps=1),
                         probe=PROBE(), fid_weights=str(fid), fvd_weights=str(fvd))
    return cfg, run(cfg)


class TestEvaluateRun:
    """The val split's clips (the held-out Waymo segment's first 3) are each generated and scored."""

    def test_every_val_clip_is_evaluated_with_its_files(self, evaluated):
        cfg, m = evaluated
        folder = world_folder(cfg)
        assert m["totals"] == {"evaluated": CLIPS, "skipped": 0, "failed": 0}
        assert all(c["clip"].startswith(WAYMO_LOG) for c in m["clips"])
        for name in ("metrics.json", "report.md", "controllability.png", "iou_per_class.png", "fidelity.png"):
            assert (folder / name).is_file(), name
        for c in m["clips"]:
            assert (folder / "mosaics" / f"{c['clip']}.png").is_file()
            assert json.loads((folder / "clips" / f"{c['clip']}.json").read_text())["status"] == "evaluated"
        assert set(m["methods"]) == {"generated", "swapped", "mean_frame", "autoencoded", "ground_truth"}
        assert "| generated (own conditions)" in (folder / "report.md").read_text()

    def test_ground_truth_scores_the_ceiling(self, evaluated, world):
        _, m = evaluated
        gt = m["methods"]["ground_truth"]
        assert math.isinf(gt["psnr"]) and gt["ssim"] == pytest.approx(1.0) and gt["flicker"] == 0.0
        assert abs(gt["fid"]) < 1e-6 and abs(gt["fvd"]) < 1e-6
        # The probe's own scores on the same real frames (the val split's Waymo clips), computed when it was
        # trained; the frames are batched differently there (convolutions then differ in the last float bits,
        # which can flip the class of a few pixels), hence the tolerance.
        # The probe's own scores on the same real frames, read directly here (frames batched differently:
        # convolutions then differ in the last float bits, which can flip a few pixels, hence the tolerance).
        from drivegen.data.dataset import ClipDataset
        from drivegen.model.probe import BoxRecall, Confusion, layout_classes, load_probe

        probe, _ = load_probe(world.probe)
        ds = ClipDataset(world.store, split="val", datasets=["waymo"])
        confusion, recall = Confusion(), BoxRecall(PROBE().min_box_pixels)
        for i in range(CLIPS):  # the plan's order: clips sorted by name
            item = ds[i]
            frames, layout = item["images"].flatten(0, 1), item["layout"].flatten(0, 1)
            pred = probe.predict(frames)
            confusion.add(pred, layout_classes(layout))
            recall.add(pred, layout, item["box_mask"].flatten(0, 1), item["box_class"].flatten(0, 1))
        assert gt["miou"] == pytest.approx(confusion.miou(), abs=2e-3)
        assert gt["box_recall"] == pytest.approx(recall.value, abs=2e-3)
        for method in ("generated", "swapped", "mean_frame"):
            assert math.isfinite(m["methods"][method]["psnr"]) and m["methods"][method]["fid"] > 0

    def test_rerun_skips_finished_clips_and_the_same_seed_gives_the_same_numbers(self, evaluated):
        from drivegen.evaluate.run import run

        cfg, first = evaluated
        clips = world_folder(cfg) / "clips"
        files = sorted(clips.glob("*.json"))
        stamps = {f: f.stat().st_mtime_ns for f in files}
        again = run(cfg)
        assert again["totals"] == {"evaluated": 0, "skipped": CLIPS, "failed": 0}
        assert {f: f.stat().st_mtime_ns for f in files} == stamps
        assert again["methods"] == first["methods"]
        # One clip's result removed: only it is generated again, with the same numbers.
        before = json.loads(files[0].read_text())
        files[0].unlink()
        third = run(cfg)
        assert third["totals"] == {"evaluated": 1, "skipped": CLIPS - 1, "failed": 0}
        assert json.loads(files[0].read_text())["scores"] == before["scores"]
        assert third["methods"] == first["methods"]

    def test_missing_weights_file_names_its_key_before_any_work(self, evaluated, tmp_path):
        from drivegen.evaluate.run import run

        cfg, _ = evaluated
        for key in ("fid_weights", "fvd_weights", "lpips_weights"):
            bad = dataclasses.replace(cfg, out=str(tmp_path), **{key: str(tmp_path / "missing.pt")})
            with pytest.raises(WeightsFileError, match=rf"{key}=.*missing\.pt.*{key}=null"):
                run(bad)
            assert not any(tmp_path.iterdir())  # nothing started

    def test_without_feature_weights_fid_and_fvd_are_not_computed(self, evaluated):
        from drivegen.evaluate.run import run

        cfg, _ = evaluated
        m = run(dataclasses.replace(cfg, fid_weights=None, fvd_weights=None, max_clips=2, run="no-features"))
        for method in m["methods"].values():
            assert method["fid"] == "not computed (set evaluate.fid_weights)"
            assert method["fvd"] == "not computed (set evaluate.fvd_weights)"


def world_folder(cfg):
    from pathlib import Path

    return Path(cfg.out) / cfg.run


class TestStaleProbe:
    """A probe trained on other logs than the store's train split holds now (it may have seen today's val
    logs) is never reused: with probe.train=false that is an error naming the logs, else it is retrained."""

    def test_probe_of_other_train_logs_is_refused(self, world, evaluated, tmp_path):
        from drivegen.errors import ProbeError
        from drivegen.evaluate.config import ProbeConfig
        from drivegen.evaluate.run import run
        from drivegen.model.probe import load_probe, save_probe

        cfg, _ = evaluated
        probe, info = load_probe(world.probe)
        stale = tmp_path / "stale.safetensors"
        save_probe(probe, stale, dict(info, train_logs=sorted(world.val_logs)))
        bad = dataclasses.replace(cfg, out=str(tmp_path / "out"), probe=ProbeConfig(path=str(stale), train=False))
        with pytest.raises(ProbeError, match=r"probe\.path=.*stale\.safetensors.*trained on logs"):
            run(bad)
