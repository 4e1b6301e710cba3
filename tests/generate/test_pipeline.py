"""python -m drivegen.generate end to end on a tiny trained checkpoint: videos, mosaic, labels and
manifest per scenario; chunked generation past the training length with a streaming decode; same
seed, same video; reruns skip finished work; a Ray batch completes around a broken scenario."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import imageio.v2 as imageio
import pytest

from generate_shared import CAMERAS, IMAGE_SIZE, write_scenario
from drivegen.errors import CheckpointError, GenerateConfigError
from drivegen.generate import pipeline
from drivegen.generate.batch import run
from drivegen.generate.config import GenerateConfig, SamplerConfig

EDIT = """
frames: {frames}
remove: [18]
insert:
  - id: cut_in_car
    class: car
    waypoints: [[0.0, 14.0, -3.5], [0.5, 18.0, -2.0], [1.0, 22.0, 0.0]]
ego: {{speed_scale: 0.5}}
"""


def config(world, out: Path, **kw) -> GenerateConfig:
    sampler = kw.pop("sampler", SamplerConfig(steps=2))
    return GenerateConfig(checkpoint=str(world.checkpoint), out=str(out), sampler=sampler,
                          **{"mode": "local", "progress": False, **kw})


def frames_of(folder: Path) -> list[bytes]:
    """The generated frames as written into the dataroot (JPEG bytes), in a fixed order."""
    return [p.read_bytes() for p in sorted((folder / "nuscenes" / "samples").rglob("*.jpg"))]


class TestGenerate:
    """One scenario: an mp4 per camera, a mosaic with the control row, a nuScenes dataroot that the
    devkit loads, and a manifest; 13 frames from a 5-frame model come in 3 chunks, decoded group by group."""

    def test_long_scenario_writes_videos_labels_and_manifest(self, world, tmp_path, monkeypatch):
        appended = []
        original = pipeline.Mp4Writer.append
        monkeypatch.setattr(pipeline.Mp4Writer, "append",
                            lambda self, frames: (appended.append((self.path.name, len(frames))), original(self, frames)))
        path = write_scenario(tmp_path, "cut_in", EDIT.format(frames=13))
        report = run(config(world, tmp_path / "out", scenarios=[str(path)]))
        assert report["totals"] == {"generated": 1, "skipped": 0, "failed": 0}
        folder = tmp_path / "out" / "cut_in"
        for cam in CAMERAS:
            video = imageio.mimread(folder / f"{cam}.mp4")
            assert len(video) == 13 and video[0].shape == (*IMAGE_SIZE, 3)
        grid = imageio.mimread(folder / "mosaic.mp4")
        assert grid[0].shape[0] == 2 * IMAGE_SIZE[0] + 2  # generated row over control row
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["chunks"] == 3 and manifest["latent_frames"] == 4 and manifest["frames"] == 13
        assert manifest["seed"] == 0 and len(manifest["checkpoint_hash"]) == 64 and len(manifest["scenario_hash"]) == 64
        assert manifest["config"]["sampler"]["steps"] == 2 and manifest["edited_agents"] == ["cut_in_car"]
        # streaming: each writer got one decoder group at a time (1 frame, then 4), never the whole video
        per_camera = [n for name, n in appended if name == "CAM_FRONT.mp4"]
        assert per_camera == [1, 4, 4, 4]
        # labels: the devkit loads them; the inserted car is annotated on every frame
        from nuscenes.nuscenes import NuScenes

        with contextlib.redirect_stdout(io.StringIO()):
            nusc = NuScenes(version="v1.0-drivegen-generated", dataroot=str(folder / "nuscenes"), verbose=False)
        assert len(nusc.sample) == 13 and len(nusc.sample_data) == 13 * len(CAMERAS)
        assert max(i["nbr_annotations"] for i in nusc.instance) == 13
        assert not list(tmp_path.joinpath("out").glob(".*partial*"))

    def test_same_seed_gives_identical_video_and_another_seed_does_not(self, world, tmp_path):
        path = write_scenario(tmp_path, "short", EDIT.format(frames=5))
        run(config(world, tmp_path / "a", scenarios=[str(path)]))
        run(config(world, tmp_path / "b", scenarios=[str(path)]))
        run(config(world, tmp_path / "c", scenarios=[str(path)], sampler=SamplerConfig(steps=2, seed=1)))
        a, b, c = (frames_of(tmp_path / x / "short") for x in "abc")
        assert len(a) == 5 * len(CAMERAS) and a == b
        assert a != c

    def test_rerun_skips_finished_and_redoes_changed_settings(self, world, tmp_path):
        path = write_scenario(tmp_path, "again", EDIT.format(frames=5))
        cfg = config(world, tmp_path / "out", scenarios=[str(path)])
        assert run(cfg)["totals"]["generated"] == 1
        manifest = tmp_path / "out" / "again" / "manifest.json"
        stamp = manifest.stat().st_mtime_ns
        assert run(cfg)["totals"] == {"generated": 0, "skipped": 1, "failed": 0}
        assert manifest.stat().st_mtime_ns == stamp
        changed = config(world, tmp_path / "out", scenarios=[str(path)], sampler=SamplerConfig(steps=1))
        assert run(changed)["totals"]["generated"] == 1

    def test_missing_checkpoint_names_the_key_and_make_train(self, tmp_path):
        with pytest.raises(CheckpointError, match=r"checkpoint='.*nothing'.*make train"):
            run(GenerateConfig(checkpoint=str(tmp_path / "nothing"), out=str(tmp_path), progress=False))

    def test_guidance_on_a_model_trained_without_the_null_condition_is_refused(self, world, tmp_path):
        # The session's checkpoint is trained with the default objective.control_dropout = 0.
        cfg = config(world, tmp_path / "out", sampler=SamplerConfig(steps=2, guidance=2.0))
        with pytest.raises(CheckpointError, match=r"sampler.guidance=2.0 needs .*objective.control_dropout > 0"):
            run(cfg)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    def test_text_without_text_conditioning_fails_naming_the_field(self, world, tmp_path):
        path = write_scenario(tmp_path, "rainy", "frames: 5\ntext: {weather: rain}\n")
        report = run(config(world, tmp_path / "out", scenarios=[str(path)]))
        assert report["totals"]["failed"] == 1
        assert "field text.weather" in report["failed"][0]["reason"]


class TestRayBatch:
    """Scenarios over Ray actors: a broken one is reported (report.json and the summary) and the
    others complete; a rerun skips the finished ones."""

    def test_broken_scenario_is_reported_and_others_complete(self, world, tmp_path, capsys):
        good = [write_scenario(tmp_path, f"good_{i}", f"frames: 5\nseed: {i}\n") for i in range(2)]
        broken = write_scenario(tmp_path, "broken", "frames: 5\nremove: [999]\n")
        unparsable = write_scenario(tmp_path, "unparsable", "frames: 5\ninsert: [{id: x, class: ufo, waypoints: [[0, 1, 1]]}]\n")
        files = [str(good[0]), str(broken), str(good[1]), str(unparsable)]
        cfg = config(world, tmp_path / "out", scenarios=files, mode="ray", progress=True)
        report = run(cfg)
        assert report["mode"] == "ray"
        assert report["totals"] == {"generated": 2, "skipped": 0, "failed": 2}
        reasons = {f["scenario"]: f["reason"] for f in report["failed"]}
        assert "agent '999', field remove[0]" in reasons["broken"]
        assert "field insert[0].class" in reasons["unparsable"]
        for name in ("good_0", "good_1"):
            assert (tmp_path / "out" / name / "manifest.json").is_file()
        assert not (tmp_path / "out" / "broken").exists()
        saved = json.loads((tmp_path / "out" / "report.json").read_text())
        assert [f["scenario"] for f in saved["failed"]] == ["broken", "unparsable"]
        summary = capsys.readouterr().err
        assert "| broken " in summary and "failed" in summary and "2 generated" in summary
        again = run(config(world, tmp_path / "out", scenarios=[str(g) for g in good], mode="ray"))
        assert again["totals"] == {"generated": 0, "skipped": 2, "failed": 0}  # no actor was needed
