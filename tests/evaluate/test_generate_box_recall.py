"""python -m drivegen.generate says how far its labels can be trusted: the manifest and the report row
carry the box recall that the store's layout probe reads from the generated pixels, or why not."""

from __future__ import annotations

import json

from drivegen.model.probe import FrameRecall


class TestGenerateWritesBoxRecall:
    """With a probe beside the store, each generated scenario's labels are scored against its frames."""

    def test_manifest_carries_the_box_recall_of_the_generated_frames(self, world, tmp_path):
        from drivegen.generate.config import GenerateConfig, SamplerConfig
        from drivegen.generate.pipeline import Generator

        scenario = tmp_path / "plain.yaml"
        scenario.write_text("name: plain\nsource: {store: null, clip: null}\nframes: 5\n")
        cfg = GenerateConfig(checkpoint=str(world.checkpoint), scenarios=[str(scenario)], out=str(tmp_path / "gen"),
                             sampler=SamplerConfig(steps=1), mode="local", progress=False)
        row = Generator(cfg)(str(scenario))
        recall = json.loads((tmp_path / "gen" / "plain" / "manifest.json").read_text())["box_recall"]
        assert recall["probe"] == str(world.probe)
        assert recall["visible_boxes"] > 0 and 0.0 <= recall["box_recall"] <= 1.0
        assert recall["recalled_boxes"] == sum(c["recalled"] for c in recall["per_class"].values())
        assert row["box_recall"] == recall["box_recall"]

    def test_without_a_probe_nothing_is_scored_and_the_note_says_how_to_get_one(self, tmp_path):
        out = FrameRecall(tmp_path / "clips.zarr", (32, 48)).as_dict()
        assert out["box_recall"] is None
        assert "no layout probe" in out["note"] and "python -m drivegen.evaluate.probe" in out["note"]

    def test_a_probe_of_another_image_size_is_not_used(self, world):
        out = FrameRecall(world.store, (64, 112)).as_dict()
        assert out["box_recall"] is None and "[32, 48]" in out["note"]
