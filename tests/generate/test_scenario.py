"""Scenario edits change the conditioning exactly as stated, and bad scenarios fail with errors
that name the agent and the field."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from conditions import LayoutConfig
from drivegen.errors import ScenarioError
from drivegen.generate.scenario import ValidationConfig, apply_edits, load_scenario, parse_scenario
from drivegen.data.clips import render_clip_arrays

FRAMES = 13  # ~1 s at 12 Hz
CAMERAS = ["CAM_FRONT", "CAM_BACK"]
LAYOUT = LayoutConfig(image_size=(64, 112), bev=None)


def render(scene):
    arrays, _ = render_clip_arrays(scene, list(range(len(scene.frames))), CAMERAS, LAYOUT)
    return arrays


def frames_with_track(arrays, track: int, camera: int) -> list[int]:
    """Frames where `track` holds a token slot in `camera` and shows at least one pixel."""
    hit = (arrays["box_track"][:, camera] == track) & (arrays["box_visible_px"][:, camera] > 0)
    return [int(t) for t in np.nonzero(hit.any(axis=1))[0]]


def edit(source_scene, body: dict, validation=None):
    return apply_edits(parse_scenario({"name": "t", **body}), source_scene, 0, FRAMES, validation)


class TestEditsChangeConditioning:
    """An inserted agent appears in the layout of the cameras that see it, at exactly the frames its
    waypoints span; a removed one disappears; moved, retimed agents and a slowed ego are where the
    edit puts them."""

    def test_inserted_car_ahead_appears_in_front_camera_at_its_frames_only(self, source_scene):
        edited = edit(source_scene, {"insert": [{"id": "new_car", "class": "car", "size": [4.5, 1.9, 1.6],
                                                 "waypoints": [{"t": 0.25, "x": 15.0, "y": 0.0},
                                                               {"t": 0.6, "x": 16.0, "y": 0.0}]}]})
        track = next(k for k, n in edited.names.items() if n == "new_car")
        arrays = render(edited.scene)
        # 12 Hz: frames 3..7 lie in [0.25 s, 0.6 s].
        assert frames_with_track(arrays, track, CAMERAS.index("CAM_FRONT")) == [3, 4, 5, 6, 7]
        assert frames_with_track(arrays, track, CAMERAS.index("CAM_BACK")) == []
        # it is a car token with its size, and the layout paints its instance in the car channel
        t, k = 5, CAMERAS.index("CAM_FRONT")
        slot = int(np.nonzero(arrays["box_track"][t, k] == track)[0][0])
        assert arrays["box_class"][t, k, slot] == 0  # BOX_CLASSES[0] == "car"
        assert np.allclose(arrays["box_params"][t, k, slot, 3:6], [4.5, 1.9, 1.6])
        car_channel = list(render_clip_arrays(edited.scene, [t], CAMERAS, LAYOUT)[1].layout_channels).index("car")
        instance = arrays["layout"][t, k, -1] == slot + 1
        assert instance.any() and (arrays["layout"][t, k, car_channel][instance] > 0).all()

    def test_removed_agent_disappears_from_every_camera_and_frame(self, source_scene):
        before = render(edit(source_scene, {}).scene)
        front = CAMERAS.index("CAM_FRONT")
        assert frames_with_track(before, 18, front)  # the motorcycle ahead is seen
        after = render(edit(source_scene, {"remove": [18]}).scene)
        assert not (after["box_track"] == 18).any()
        others = lambda a: set(np.unique(a["box_track"])) - {-1, 18}  # noqa: E731
        assert others(after) == others(before)

    def test_moved_agent_is_offset_in_the_scenario_frame(self, source_scene):
        edited = edit(source_scene, {"move": [{"track": 17, "offset": [2.0, -1.0]}]})
        R = source_scene.frames[0].ego_to_world[:2, :2]
        for src, out in zip(source_scene.frames[:FRAMES], edited.scene.frames):
            c0 = src.agents.center[list(src.agents.track_ids).index(17)]
            c1 = out.agents.center[list(out.agents.track_ids).index(17)]
            assert np.allclose(c1[:2] - c0[:2], R @ [2.0, -1.0]) and math.isclose(c1[2], c0[2])

    def test_retimed_agent_is_where_it_was_delay_earlier_and_absent_before(self, source_scene):
        edited = edit(source_scene, {"retime": [{"track": 17, "delay_s": 0.25}]})  # 3 frames at 12 Hz
        for i, out in enumerate(edited.scene.frames):
            present = 17 in out.agents.track_ids
            assert present == (i >= 3)
            if present:
                src = source_scene.frames[i - 3].agents
                assert np.allclose(out.agents.center[list(out.agents.track_ids).index(17)],
                                   src.center[list(src.track_ids).index(17)], atol=1e-3)

    def test_slowed_ego_follows_its_path_at_the_scaled_time(self, source_scene):
        edited = edit(source_scene, {"ego": {"speed_scale": 0.5}})
        for i in range(0, FRAMES, 2):
            assert np.allclose(edited.scene.frames[i].ego_to_world, source_scene.frames[i // 2].ego_to_world, atol=1e-4)
        # the agents keep their own timing
        assert np.array_equal(edited.scene.frames[12].agents.center, source_scene.frames[12].agents.center)


class TestScenarioValidation:
    """Invalid scenarios raise ScenarioError naming the agent and the field; off-map trajectories
    warn or raise as validation.off_map says."""

    def car(self, waypoints, cls="car", id="ghost"):
        return {"insert": [{"id": id, "class": cls, "waypoints": waypoints}]}

    def test_unknown_class_names_agent_and_field(self):
        with pytest.raises(ScenarioError, match=r"agent 'ufo', field insert\[0\]\.class: 'spaceship'") as info:
            parse_scenario({"name": "t", **self.car([{"t": 0, "x": 1, "y": 1}], cls="spaceship", id="ufo")})
        assert info.value.agent == "ufo" and info.value.field == "insert[0].class"

    def test_non_finite_time_names_waypoint(self):
        with pytest.raises(ScenarioError, match=r"agent 'ghost', field insert\[0\]\.waypoints\[1\]\.t: .*not finite"):
            parse_scenario({"name": "t", **self.car([{"t": 0, "x": 1, "y": 1}, {"t": float("nan"), "x": 2, "y": 1}])})

    def test_non_monotonic_times_name_waypoint(self):
        wps = [{"t": 0.0, "x": 1, "y": 1}, {"t": 0.5, "x": 2, "y": 1}, {"t": 0.4, "x": 3, "y": 1}]
        with pytest.raises(ScenarioError, match=r"field insert\[0\]\.waypoints\[2\]\.t: 0.4 is not after"):
            parse_scenario({"name": "t", **self.car(wps)})

    def test_overlap_with_logged_agent_at_same_instant_names_both(self, source_scene):
        # car 17 is at (6.4, -3.3) in the scenario frame at t = 0
        with pytest.raises(ScenarioError, match=r"agent 'ghost', field insert\[0\]\.waypoints: overlaps agent '17' "
                                                r"in 3D at t = 0.000 s"):
            edit(source_scene, self.car([{"t": 0.0, "x": 6.4, "y": -3.3}]))

    def test_overlap_with_the_ego_is_an_error(self, source_scene):
        with pytest.raises(ScenarioError, match=r"agent 'ghost', .*overlaps agent 'ego'"):
            edit(source_scene, self.car([{"t": 0.0, "x": 1.0, "y": 0.3}]))

    def test_off_map_trajectory_errors_or_warns_per_config(self, source_scene):
        body = self.car([{"t": 0.0, "x": 0.0, "y": 400.0}], cls="pedestrian", id="lost")
        with pytest.raises(ScenarioError, match=r"agent 'lost', field insert\[0\]\.waypoints: centre .* leaves the map"):
            edit(source_scene, body, ValidationConfig(off_map="error"))
        with pytest.warns(UserWarning, match=r"agent 'lost'.*leaves the map"):
            edited = edit(source_scene, body, ValidationConfig(off_map="warn"))
        assert edited.warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not edit(source_scene, body, ValidationConfig(off_map="ignore")).warnings

    def test_unknown_track_names_it(self, source_scene):
        with pytest.raises(ScenarioError, match=r"agent '999', field remove\[0\]: track 999 is not in the clip"):
            edit(source_scene, {"remove": [999]})

    def test_unknown_key_and_bad_length_name_the_field(self, tmp_path):
        with pytest.raises(ScenarioError, match=r"field insrt: unknown key"):
            parse_scenario({"name": "t", "insrt": []})
        path = tmp_path / "long.yaml"
        path.write_text("frames: 12\n")
        with pytest.raises(ScenarioError, match=r"scenario 'long': field frames: 12; .*1 \+ 4k"):
            load_scenario(path)

    def test_shipped_sample_scenario_is_valid(self, source_scene):
        from drivegen.generate.pipeline import resolve_scenario_file

        scenario = load_scenario(resolve_scenario_file("sample_edit.yaml"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not even an off-map warning
            edited = apply_edits(scenario, source_scene, 0, scenario.frames)
        assert "cut_in_car" in edited.names.values() and 18 not in edited.names
