"""`python -m drivegen.preview` shows any log (nuScenes, Waymo), store clip or generated scenario
folder: every camera named and laid out as its source has them, images with the projected boxes
and map over them, the control images and the BEV; a PNG for one frame, an mp4 for several."""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from chopgrad_core.video import read_video, write_mp4
from conditions import Scene
from conditions.demo import make_demo_scene
from conditions.layout import COLOUR_LUT
from conditions.preview import camera_grid, compose
from conditions.render import render_frame
from conditions.layout import LayoutConfig
from conditions.taxonomy import BOX_CLASSES, BOX_COLOURS, MAP_CLASSES
from drivegen.config import CONFIG_DIR, compose as compose_config
from drivegen.data.clips import resize_image
from drivegen.data.ingest import open_log
from drivegen.data.nuscenes_format import write_scene_dataroot
from drivegen.data.preprocess import ClipWorker
from drivegen.data.preprocess.config import ClipConfig, ConditionsConfig, PreprocessConfig
from drivegen.data import store
from drivegen.data.sample_data import generate_sample_logs, sample_waymo_cameras
from drivegen.errors import ConfigError
from drivegen.preview import PreviewConfig, load_source, overlay, preview

REPO = Path(__file__).resolve().parents[2]
HW = (32, 56)
NUSCENES_GRID = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"), ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
WAYMO_GRID = (("SIDE_LEFT", "FRONT_LEFT", "FRONT", "FRONT_RIGHT", "SIDE_RIGHT"),)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate_sample_logs(tmp_path_factory.mktemp("preview") / "sample", image_size=HW, nuscenes_scenes=1)


def _tiles_height(rows: int) -> int:
    return 22 + 2 * rows * (HW[0] + 4) + 4  # caption, image rows, separator, control rows


class TestLogPreview:
    """A log of either format: every camera of the source, its names, its layout."""

    @pytest.mark.parametrize("kind, grid", [("nuscenes", NUSCENES_GRID), ("waymo", WAYMO_GRID)])
    def test_png_shows_every_camera_as_the_source_names_them(self, sample, tmp_path, kind, grid):
        truth = getattr(sample, kind)
        cfg = PreviewConfig(source=str(sample.root), log=truth.ref.name, frame=3, image_size=list(HW),
                            out=str(tmp_path / "p.png"))
        clip = load_source(cfg)
        assert clip.cameras == open_log(truth.ref).scene.camera_names == truth.scene.camera_names
        assert camera_grid(clip.cameras, clip.arrays["cam_to_ego"][0]) == grid
        assert clip.images is not None and clip.images.shape == (1, len(clip.cameras), *HW, 3)
        assert int(clip.arrays["frame_index"][0]) == 3
        image = cv2.imread(str(preview(cfg)))
        assert image.shape[0] == _tiles_height(len(grid)) + _tiles_height(len(grid)) % 2
        assert image.shape[1] > max(len(r) for r in grid) * (HW[1] + 4)  # the BEV on the right
        assert any("not drawn" in n for n in clip.notes)  # the sample's class outside the taxonomy

    def test_cli_writes_the_png_it_prints(self, sample, tmp_path, monkeypatch, capsys):
        from drivegen.preview.__main__ import main

        out = tmp_path / "cli.png"
        monkeypatch.setattr(sys, "argv", ["drivegen.preview", f"source={sample.waymo.ref.path}", "image_size=[32,56]",
                                          f"out={out}", f"hydra.run.dir={tmp_path}", "hydra.output_subdir=null"])
        main()
        assert capsys.readouterr().out.strip() == str(out) and cv2.imread(str(out)) is not None

    def test_unknown_log_names_the_ones_there(self, sample):
        with pytest.raises(ConfigError, match="scene-drivegen-0001"):
            load_source(PreviewConfig(source=str(sample.root), log="nope"))


class TestOverlay:
    """Boxes are drawn along their projected edges in class colours; the map tints the pixels the
    layout marks, and nothing else changes."""

    def test_box_edges_and_map_land_where_the_arrays_say(self):
        H, W, S = 40, 60, 2
        image = np.zeros((H, W, 3), np.uint8)
        layout = np.zeros((len(MAP_CLASSES) + 12, H, W), np.uint8)
        layout[0, 30:, :] = 1  # the first map class on the bottom rows
        corners = np.zeros((S, 8, 2))
        # a box whose front face spans columns 10..30, rows 5..15 (normalised corner coordinates)
        front = np.array([[10, 5], [30, 5], [30, 15], [10, 15]], float)
        corners[0, :4] = (front + 0.5) / [W, H]
        corners[0, 4:] = (front + [2, 2] + 0.5) / [W, H]
        cls = BOX_CLASSES.index("car")
        out = overlay(image, layout, corners, np.ones((S, 8), bool), np.array([True, False]), np.array([cls, -1]))
        assert np.allclose(out[5, 20], BOX_COLOURS["car"], atol=30)  # on the top edge (anti-aliased)
        assert not out[10, 20].any()  # inside the face: untouched
        tint = np.round(0.45 * COLOUR_LUT[1]).astype(np.uint8)
        assert np.array_equal(out[35, 50], tint) and not out[25, 50].any()


class TestStoreClipPreview:
    """A store clip: its own arrays and images; several frames make an mp4 with every frame."""

    def test_mp4_of_a_clip_has_every_frame_and_its_cameras(self, sample, tmp_path):
        out = tmp_path / "clips.zarr"
        config = PreprocessConfig(out=str(out), clip=ClipConfig(length=3, stride=3),
                                  conditions=ConditionsConfig(image_size=list(HW), bev=True))
        store.open_store(str(out), config.store_settings())
        result = ClipWorker(str(out), config).write_clip(sample.waymo.ref, 0)
        assert result["status"] == "written"
        store.consolidate(str(out))  # what a preprocessing run does when it ends
        clip_dir = out / "clips" / result["clip"]
        cfg = PreviewConfig(source=str(clip_dir), num_frames=0, out=str(tmp_path / "clip.mp4"))
        clip = load_source(cfg)
        assert clip.cameras == sample.waymo.scene.camera_names and clip.images.shape[:2] == (3, 5)
        assert "bev" in clip.arrays
        frames = read_video(preview(cfg))
        assert frames.shape[0] == 3 and frames.shape[1] == _tiles_height(1)


class TestGeneratedPreview:
    """A generated scenario's folder is read as files: manifest.json, <camera>.mp4, nuscenes/."""

    def test_generated_folder_shows_the_videos_with_the_labels_boxes(self, sample, tmp_path):
        folder = tmp_path / "generate" / "cut_in"
        source = open_log(sample.nuscenes.ref)
        cameras = ["CAM_FRONT", "CAM_BACK"]
        scene = source.scene
        scene = Scene(cameras=tuple(c for c in scene.cameras if c.name in cameras), frames=scene.frames[:5],
                      map_elements=scene.map_elements, source=scene.source)
        version = "v1.0-drivegen-generated"
        write_scene_dataroot(folder / "nuscenes", scene, version=version, scene_name="cut_in",
                             location="boston-seaport", image_hw=HW)
        for cam in cameras:
            write_mp4(folder / f"{cam}.mp4", np.stack([resize_image(source.image(cam, f), HW) for f in range(5)]), fps=12)
        (folder / "manifest.json").write_text(json.dumps({
            "scenario": "cut_in", "cameras": cameras, "image_size": list(HW), "frames": 5,
            "config": {"labels": {"version": version}}}))
        cfg = PreviewConfig(source=str(folder), num_frames=0, out=str(tmp_path / "gen.mp4"))
        clip = load_source(cfg)
        assert clip.cameras == tuple(cameras)
        for k, cam in enumerate(cameras):
            assert np.array_equal(clip.images[:, k], read_video(folder / f"{cam}.mp4"))
        assert clip.arrays["box_mask"].any()  # the labels' boxes are drawn
        assert read_video(preview(cfg)).shape[0] == 5


class TestConditionsPreview:
    """conditions.preview lays out the scene's own cameras: Waymo's five make one row."""

    def test_waymo_rig_is_one_row_of_five(self):
        demo = make_demo_scene(num_agents=10, num_frames=1)
        rig = sample_waymo_cameras(HW)
        scene = Scene(cameras=rig, frames=demo.frames, map_elements=demo.map_elements, source=demo.source)
        picture = compose(render_frame(scene, 0, config=LayoutConfig(image_size=HW)))
        assert picture.shape[0] == HW[0] + 4 and picture.shape[1] > 5 * (HW[1] + 4)


class TestPreviewConfig:
    """configs/preview.yaml mirrors PreviewConfig; Hydra composes it; a bad value names its key."""

    def test_preset_has_the_dataclass_keys_and_defaults(self):
        raw = {k: v for k, v in yaml.safe_load((CONFIG_DIR / "preview.yaml").read_text()).items()
               if k not in ("defaults", "hydra")}
        assert raw == {f.name: getattr(PreviewConfig(), f.name) for f in dataclasses.fields(PreviewConfig)}
        assert compose_config(PreviewConfig, "preview") == PreviewConfig()

    def test_bad_value_names_the_key(self):
        with pytest.raises(ConfigError, match="num_frames"):
            compose_config(PreviewConfig, "preview", ["num_frames=-1"])


def test_preview_imports_no_stage():
    """drivegen.preview reads files; it never imports the preprocess/train/generate/evaluate stages."""
    stages = ("drivegen.preprocess", "drivegen.train", "drivegen.generate", "drivegen.evaluate", "drivegen.model")
    for path in (REPO / "drivegen" / "preview").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(stages)], (path.name, names)
