"""The generated clip's labels are a nuScenes dataroot that nuscenes-devkit loads and that matches
the edited scenario: one sample per frame, one annotation per agent present, at its position."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from conditions import map_nuscenes_categories
from drivegen.generate.scenario import apply_edits, parse_scenario
from drivegen.data.nuscenes_format import write_scene_dataroot

VERSION = "v1.0-test-generated"
SCENARIO = {"name": "labels", "remove": [18], "ego": {"speed_scale": 0.5},
            "insert": [{"id": "cut_in", "class": "truck", "waypoints": [[0.0, 14.0, -3.5], [0.9, 24.0, -1.0]]}]}


@pytest.fixture(scope="module")
def dataroot(source_scene, tmp_path_factory):
    edited = apply_edits(parse_scenario(SCENARIO), source_scene, 0, 9)
    root = tmp_path_factory.mktemp("labels") / "nuscenes"
    write_scene_dataroot(root, edited.scene, version=VERSION, scene_name="labels", location="boston-seaport",
                         image_hw=(32, 48))
    return root, edited


def devkit(root):
    from nuscenes.nuscenes import NuScenes

    with contextlib.redirect_stdout(io.StringIO()):
        return NuScenes(version=VERSION, dataroot=str(root), verbose=False)


class TestNuScenesLabels:
    """nuscenes-devkit loads the dataroot; its samples, annotations, poses and classes are the scenario's."""

    def test_devkit_loads_one_sample_per_frame_with_every_agent(self, dataroot):
        root, edited = dataroot
        nusc = devkit(root)
        assert [s["name"] for s in nusc.scene] == ["labels"]
        samples = sorted(nusc.sample, key=lambda s: s["timestamp"])
        frames = edited.scene.frames
        assert [s["timestamp"] for s in samples] == [f.timestamp_us for f in frames]
        for sample, frame in zip(samples, frames):
            anns = [nusc.get("sample_annotation", a) for a in sample["anns"]]
            assert len(anns) == len(frame.agents)
            got = np.array(sorted(a["translation"] for a in anns))
            assert np.allclose(got, np.array(sorted(frame.agents.center.tolist())), atol=1e-6)
            assert len(sample["data"]) == len(edited.scene.cameras)  # every camera is a keyframe

    def test_inserted_agent_is_an_instance_with_its_class_and_removed_one_is_absent(self, dataroot, source_scene):
        root, edited = dataroot
        nusc = devkit(root)
        track = next(k for k, n in edited.names.items() if n == "cut_in")
        present = sum(track in f.agents.track_ids for f in edited.scene.frames)
        cats = {inst["token"]: nusc.get("category", inst["category_token"])["name"] for inst in nusc.instance}
        classes = map_nuscenes_categories(list(cats.values())).classes
        counts = {c: sum(1 for x in classes if x == c) for c in set(classes)}
        trucks = [inst for inst in nusc.instance if cats[inst["token"]] == "vehicle.truck"]
        assert counts.get("truck") == len(trucks)
        assert any(inst["nbr_annotations"] == present for inst in trucks)
        assert len(nusc.instance) == len({int(t) for f in edited.scene.frames for t in f.agents.track_ids})
        # per class, one instance per track of the edited scene: the source clip's, less the removed
        # motorcycle, plus the inserted truck
        want = {}
        for k in {int(t) for f in edited.scene.frames for t in f.agents.track_ids}:
            want[_class_of(edited.scene, k)] = want.get(_class_of(edited.scene, k), 0) + 1
        assert counts == want
        source = {}
        for k in {int(t) for f in source_scene.frames[:9] for t in f.agents.track_ids}:
            source[_class_of(source_scene, k)] = source.get(_class_of(source_scene, k), 0) + 1
        assert counts["motorcycle"] == source["motorcycle"] - 1 and counts["truck"] == source.get("truck", 0) + 1

    def test_drivegen_reader_reads_back_the_edited_scene(self, dataroot):
        from drivegen.data.ingest import LogRef
        from drivegen.data.ingest.nuscenes import NuScenesReader

        root, edited = dataroot
        scene = NuScenesReader(LogRef("nuscenes", str(root), "labels", VERSION)).scene
        assert len(scene.frames) == len(edited.scene.frames)
        for got, want in zip(scene.frames, edited.scene.frames):
            assert np.allclose(got.ego_to_world, want.ego_to_world, atol=1e-6)
            order = np.lexsort(want.agents.center.T)
            order_got = np.lexsort(got.agents.center.T)
            assert np.allclose(got.agents.center[order_got], want.agents.center[order], atol=1e-6)
            assert np.allclose(got.agents.size[order_got], want.agents.size[order], atol=1e-6)
            assert [got.agents.classes[i] for i in order_got] == [want.agents.classes[i] for i in order]
        assert {e.cls for e in scene.map_elements} >= {"drivable_area", "lane_divider"}
        # intrinsics were rescaled to the generated image size
        assert scene.cameras[0].image_size == (32, 48)


def _class_of(scene, track: int) -> str:
    for f in scene.frames:
        ids = list(f.agents.track_ids)
        if track in ids:
            return f.agents.classes[ids.index(track)]
    raise KeyError(track)
