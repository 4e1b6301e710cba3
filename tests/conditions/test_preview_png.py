"""`python -m conditions.preview --out PATH` writes a PNG of the demo frame and prints its path;
the demo scene shows boxes and map in every camera of the nuScenes rig."""

import cv2
import numpy as np

from conditions import INSTANCE_CHANNEL, LayoutConfig, render_frame
from conditions.demo import NUSCENES_CAMERA_ORDER, make_demo_scene
from conditions.preview import main


class TestPreview:
    """The preview command writes a readable PNG: six camera tiles plus the BEV panel."""

    def test_preview_writes_png_and_prints_path(self, tmp_path, capsys):
        out = tmp_path / "sub" / "preview.png"
        assert main(["--out", str(out), "--size", "64", "112"]) == out
        assert capsys.readouterr().out.strip() == str(out)
        image = cv2.imread(str(out))
        assert image is not None and image.shape[0] == 2 * (64 + 4) and image.shape[1] > 3 * (112 + 4)
        assert image.std() > 10  # not blank


class TestDemoScene:
    """The demo city puts map in every camera and boxes in most, with the rig's six cameras."""

    def test_every_camera_sees_map_and_boxes(self):
        scene = make_demo_scene(num_agents=60, num_frames=2)
        assert scene.camera_names == NUSCENES_CAMERA_ORDER
        assert len(scene.frames[0].agents) == 60 and len(scene.map_elements) > 200
        out = render_frame(scene, 1, config=LayoutConfig(image_size=(64, 112)))
        assert np.all(out.layout_KCHW[:, 0].reshape(6, -1).mean(axis=1) > 0.05)  # drivable area
        assert np.all((out.layout_KCHW[:, INSTANCE_CHANNEL] > 0).reshape(6, -1).any(axis=1))
