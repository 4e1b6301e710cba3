"""Preview: the control images of one frame of the synthetic demo scene, as one PNG.

    python -m conditions.preview --out outputs/conditions_preview.png [--frame 0] [--size 256 448]

Builds `conditions.demo.make_demo_scene()` in code (no input files), renders one frame and writes
a PNG: the scene's cameras, named as the scene names them and laid out by where they look
(`camera_grid`: forward-facing ones in the top row left to right, rear-facing ones below, so
nuScenes' six show as front-left, front, front-right / back-left, back, back-right and Waymo's
five as one row side-left ... side-right), and the BEV raster in colour on the right, ego marked
in the middle (forward is up). It prints the path it wrote. This is the only file IO in
`conditions/`. `drivegen.preview` draws real logs, store clips and generated videos the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from conditions.demo import make_demo_scene
from conditions.layout import COLOUR_LUT, LayoutConfig
from conditions.render import FrameConditions, render_frame
from conditions.taxonomy import BOX_CLASSES, BOX_COLOURS, MAP_CLASSES

_REAR_DEG = 100.0  # cameras looking further than this from straight ahead go in the rear row


def camera_grid(camera_names, cam_to_ego_K44: np.ndarray) -> tuple[tuple[str, ...], ...]:
    """Rows of camera names as a viewer expects them, from where each camera looks (its optical
    axis' azimuth in the ego frame), never from a fixed list: forward-facing cameras in the top
    row from left to right, rear-facing ones in a second row from left to right as seen by a
    passenger turned around (nuScenes' back-left, back, back-right)."""
    axis_K3 = np.asarray(cam_to_ego_K44)[:, :3, 2]  # camera z (optical axis) in the ego frame
    azimuth = np.degrees(np.arctan2(axis_K3[:, 1], axis_K3[:, 0]))  # 0 ahead, +90 left (ego y left)
    front = [(a, n) for a, n in zip(azimuth, camera_names) if abs(a) <= _REAR_DEG]
    rear = [(a % 360.0, n) for a, n in zip(azimuth, camera_names) if abs(a) > _REAR_DEG]
    rows = [tuple(n for _, n in sorted(front, key=lambda x: -x[0])), tuple(n for _, n in sorted(rear))]
    return tuple(r for r in rows if r)


def bev_colour(bev_CHW: np.ndarray) -> np.ndarray:
    """RGB picture (H, W, 3) of a BEV raster: map colours, box footprints in class colours."""
    num_map = len(MAP_CLASSES)
    code = np.zeros(bev_CHW.shape[1:], dtype=np.int64)
    for i in range(num_map):
        code[bev_CHW[i] > 0] = i + 1  # later classes over earlier ones, as in the control image
    out = COLOUR_LUT[code].copy()
    for c, name in enumerate(BOX_CLASSES):
        out[bev_CHW[num_map + c] > 0] = BOX_COLOURS[name]
    return out


def compose(conditions: FrameConditions) -> np.ndarray:
    """The preview picture (RGB) of one frame's conditions."""
    by_name = dict(zip(conditions.camera_names, conditions.control_KHW3))
    H, W = conditions.control_KHW3.shape[1:3]
    grid_rows = camera_grid(conditions.camera_names, conditions.cam_to_ego_K44)
    width = max(len(r) for r in grid_rows)
    rows = []
    for names in grid_rows:
        tiles = []
        for name in names + (None,) * (width - len(names)):
            tile = by_name[name].copy() if name is not None else np.zeros((H, W, 3), np.uint8)
            cv2.putText(tile, name or "", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    if conditions.bev_CHW is not None:
        bev = bev_colour(conditions.bev_CHW)
        cy, cx = bev.shape[0] // 2, bev.shape[1] // 2
        cv2.arrowedLine(bev, (cx, cy + 6), (cx, cy - 8), (255, 255, 255), 2, tipLength=0.4)
        scale = grid.shape[0] / bev.shape[0]
        bev = cv2.resize(bev, (round(bev.shape[1] * scale), grid.shape[0]), interpolation=cv2.INTER_NEAREST)
        cv2.putText(bev, "BEV (forward up)", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        grid = np.concatenate([grid, np.pad(bev, ((0, 0), (2, 2), (0, 0)))], axis=1)
    return grid


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/conditions_preview.png"), help="PNG to write")
    parser.add_argument("--frame", type=int, default=0, help="frame index of the demo scene")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 448), metavar=("H", "W"), help="per-camera size")
    args = parser.parse_args(argv)
    scene = make_demo_scene()
    conditions = render_frame(scene, args.frame, config=LayoutConfig(image_size=tuple(args.size)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(compose(conditions), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {args.out}")
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
