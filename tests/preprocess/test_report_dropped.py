"""What preprocessing leaves out is in report.json, the summary table and every clip's attrs.

One run (embedded Ray, 1 worker) over the default nuScenes sample log (one class outside the
taxonomy: 'animal') and a Waymo variant segment with one of everything: a class outside the
taxonomy (TYPE_SIGN), 2 camera-only labels per record (no 3D box), no map_features, no camera
images, and 3 unlabelled records at each end (outside the annotated span). Counts are the
generator's (`SampleLog.dropped`), not the reader's."""

from __future__ import annotations

import json

import pytest

from drivegen.data.dataset import ClipDataset
from drivegen.data.ingest import discover_logs
from drivegen.data.preprocess import load_config, run
from drivegen.data.sample_data import SampleVariant, generate_sample_logs
from drivegen.data.store import open_root
from drivegen.errors import DatasetConfigError

T, STRIDE = 2, 10
VARIANT = SampleVariant(unannotated_frames=3, waymo_map=False, waymo_images=False, waymo_camera_only_labels=2)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("report")
    default = generate_sample_logs(root / "default", image_size=(32, 56), nuscenes_scenes=1)
    variant = generate_sample_logs(root / "variant", image_size=(32, 56), variant=VARIANT, nuscenes_scenes=1)
    refs = [r for r in discover_logs(root / "default") if r.kind == "nuscenes"]
    refs += [r for r in discover_logs(root / "variant") if r.kind == "waymo"]
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        out = root / "clips.zarr"
        config = load_config([f"out={out}", f"clip.length={T}", f"clip.stride={STRIDE}", "conditions.image_size=[32,56]",
                              "conditions.bev=false", "progress=false", "ray.num_workers=1"])
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            report = run(config, refs=refs)
    finally:
        ray.shutdown()
    return {"out": out, "report": report, "summary": err.getvalue(),
            "truth": {"nuscenes": default.nuscenes, "waymo": variant.waymo}}


def _row(report, kind):
    return next(r for r in report["logs"] if r["kind"] == kind)


class TestReportDropped:
    """report.json rows, totals, summary text and clip attrs carry the generator's drop counts."""

    @pytest.mark.parametrize("kind", ["nuscenes", "waymo"])
    def test_report_json_rows_have_the_generators_counts(self, preprocessed, kind):
        written = json.loads((preprocessed["out"] / "report.json").read_text())
        truth = preprocessed["truth"][kind].dropped
        for report in (preprocessed["report"], written):
            dropped = dict(_row(report, kind)["dropped"])
            assert dropped.pop("boxes_over_max_boxes") == 0
            assert dropped == truth

    def test_waymo_variant_row_names_each_drop(self, preprocessed):
        dropped = _row(preprocessed["report"], "waymo")["dropped"]
        frames = len(preprocessed["truth"]["waymo"].scene.frames)
        assert dropped["unmapped_classes"] == {"TYPE_SIGN": frames}
        assert dropped["labels_without_box"] == 2 * frames
        assert not dropped["has_map"] and "map_features" in dropped["no_map"]
        assert dropped["cameras_without_images"] == {c: frames for c in
                                                     ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")}
        assert dropped["frames_outside_span"] == 6
        assert _row(preprocessed["report"], "waymo")["status"] == "conditions_only"

    def test_totals_count_the_logs_by_what_they_dropped(self, preprocessed):
        t = preprocessed["report"]["totals"]
        assert (t["logs_with_unmapped_classes"], t["logs_with_labels_without_box"], t["logs_without_map"],
                t["logs_with_cameras_without_images"], t["logs_with_frames_outside_span"]) == (2, 1, 1, 1, 1)

    def test_summary_table_shows_the_drops(self, preprocessed):
        lines = preprocessed["summary"].splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        col = header.index("dropped")
        cells = {line.split("|")[1].strip(): line.strip("|").split("|")[col].strip() for line in lines[2:4]}
        nus = next(v for k, v in cells.items() if k.startswith("scene-"))
        way = next(v for k, v in cells.items() if k.startswith("segment-"))
        keys = len(preprocessed["truth"]["nuscenes"].keyframes)
        frames = len(preprocessed["truth"]["waymo"].scene.frames)
        assert nus == f"classes animal x{keys}"
        assert way == (f"classes TYPE_SIGN x{frames}; {2 * frames} labels without 3D box; no map; no images "
                       f"FRONT x{frames}, FRONT_LEFT x{frames}, FRONT_RIGHT x{frames}, SIDE_LEFT x{frames}, "
                       f"SIDE_RIGHT x{frames}; 6 frames outside span")
        assert "1 without map" in preprocessed["summary"]

    def test_clip_attrs_count_their_own_frames(self, preprocessed):
        root = open_root(str(preprocessed["out"]))
        clips = {name: dict(g.attrs) for name, g in root["clips"].groups()}
        keyframes = set(preprocessed["truth"]["nuscenes"].keyframes)
        assert len(clips) == sum(_row(preprocessed["report"], k)["clips_total"] for k in ("nuscenes", "waymo"))
        for name, attrs in clips.items():
            s, d = attrs["start_frame"], attrs["dropped"]
            if attrs["log_kind"] == "nuscenes":
                n = len(keyframes & set(range(s, s + T)))
                assert d["unmapped_classes"] == ({"animal": n} if n else {}) and attrs["has_map"]
                assert d["cameras_without_images"] == {} and d["labels_without_box"] == 0
            else:
                assert d["unmapped_classes"] == {"TYPE_SIGN": T} and d["labels_without_box"] == 2 * T
                assert d["cameras_without_images"] == {c: T for c in attrs["cameras"]}
                assert attrs["has_map"] is False and attrs["log_dropped"]["frames_outside_span"] == 6
            assert attrs["log_dropped"] == preprocessed["truth"][attrs["log_kind"]].dropped

    def test_clip_dataset_skips_clips_without_map(self, preprocessed):
        out = preprocessed["out"]
        everything = ClipDataset(out, cameras=["CAM_FRONT"], datasets=["nuscenes"])
        mapped = ClipDataset(out, cameras=["CAM_FRONT"], require_map=True)
        assert len(mapped) == len(everything) and {mapped.metadata(i)["dataset"] for i in range(len(mapped))} == {"nuscenes"}
        with pytest.raises(DatasetConfigError, match="with a map"):
            ClipDataset(out, datasets=["waymo"], require_map=True)
        clean = ClipDataset(out, cameras=["CAM_FRONT"], where=lambda a: not a["dropped"]["unmapped_classes"])
        assert 0 < len(clean) < len(everything)
