"""Readers count everything they read but leave out of the scene (`reader.dropped`): labels of
classes outside the taxonomy, labels without a 3D box, a missing map, cameras without images and
frames outside the annotated span; the sample world's variants have each, with known counts."""

from __future__ import annotations

import pytest

from drivegen.data.ingest import open_log
from drivegen.data.sample_data import SampleVariant, generate_sample_logs

VARIANT = SampleVariant(unannotated_frames=2, nuscenes_map=False, waymo_map=False, waymo_images=False,
                        waymo_camera_only_labels=2)
KINDS = ("nuscenes", "waymo")


@pytest.fixture(scope="module")
def variant_logs(tmp_path_factory):
    return generate_sample_logs(tmp_path_factory.mktemp("variant") / "sample", image_size=(32, 48), variant=VARIANT, nuscenes_scenes=1)


class TestDropped:
    """The default sample drops only its one unknown class; the variant drops one of everything."""

    @pytest.mark.parametrize("kind", KINDS)
    def test_default_sample_reports_only_the_unknown_class(self, sample, kind):
        got = open_log(getattr(sample, kind).ref).dropped.summary()
        assert got == getattr(sample, kind).dropped
        assert got["has_map"] and got["frames_outside_span"] == 0 and got["cameras_without_images"] == {}
        assert sum(got["unmapped_classes"].values()) > 0

    @pytest.mark.parametrize("kind", KINDS)
    def test_variant_counts_are_the_generators(self, variant_logs, kind):
        truth = getattr(variant_logs, kind)
        reader = open_log(truth.ref)
        assert reader.dropped.summary() == truth.dropped
        assert len(reader.scene.frames) == len(truth.scene.frames)  # unannotated frames left out
        assert [f.timestamp_us for f in reader.scene.frames] == [f.timestamp_us for f in truth.scene.frames]
        assert reader.scene.map_elements == ()

    def test_variant_waymo_drops_are_counted_per_frame(self, variant_logs):
        reader = open_log(variant_logs.waymo.ref)
        T = len(reader.scene.frames)
        clip = reader.dropped.for_frames(range(3, 8))
        assert clip["unmapped_classes"] == {"TYPE_SIGN": 5} and clip["labels_without_box"] == 2 * 5
        assert clip["cameras_without_images"] == {c: 5 for c in reader.scene.camera_names}
        assert reader.dropped.summary()["labels_without_box"] == 2 * T and not reader.has_images

    def test_nuscenes_unmapped_annotations_count_at_their_keyframe(self, sample):
        reader = open_log(sample.nuscenes.ref)
        per_frame = [sum(d.values()) for d in reader.dropped.unmapped_classes]
        assert [f for f, n in enumerate(per_frame) if n] == list(sample.nuscenes.keyframes)
