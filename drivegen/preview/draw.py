"""Drawing a `PreviewClip` frame: camera images with the projected boxes and map over them, the
control images, and the BEV, cameras laid out by `conditions.preview.camera_grid` (from where
each camera looks, named as the source names them).

Shape legend: K cameras, H W tile size, S box slots, C layout channels.
"""

from __future__ import annotations

import cv2
import numpy as np

from conditions.layout import COLOUR_LUT
from conditions.preview import bev_colour, camera_grid
from conditions.taxonomy import BOX_CLASSES, BOX_COLOURS, MAP_CLASSES
from drivegen.preview.sources import PreviewClip

__all__ = ["BOX_EDGES", "compose_frame", "overlay"]

# Edges between the 8 corners in the devkit's Box.corners() order (0-3 front face, 4-7 rear face).
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
_MAP_ALPHA = 0.45  # map classes tint the image; boxes are drawn opaque on top
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def overlay(image_HW3: np.ndarray, layout_CHW: np.ndarray, corners_S82: np.ndarray, corner_mask_S8: np.ndarray,
            box_mask_S: np.ndarray, box_class_S: np.ndarray) -> np.ndarray:
    """The image with the map (layout map channels, in the control image's colours) blended in and
    every box in view outlined in its class colour (12 edges; edges with a corner behind the
    camera are skipped)."""
    H, W = image_HW3.shape[:2]
    out = image_HW3.astype(np.float32)
    code = np.zeros((H, W), np.int64)
    for i in range(len(MAP_CLASSES)):
        code[layout_CHW[i] > 0] = i + 1  # later classes over earlier ones, as in the control image
    on_map = code > 0
    out[on_map] = (1 - _MAP_ALPHA) * out[on_map] + _MAP_ALPHA * COLOUR_LUT[code[on_map]]
    out = out.round().astype(np.uint8)
    thickness = max(1, round(min(H, W) / 150))
    for s in np.flatnonzero(box_mask_S):
        colour = tuple(int(c) for c in BOX_COLOURS[BOX_CLASSES[int(box_class_S[s])]])
        px = corners_S82[s] * np.array([W, H]) - 0.5  # normalised (u, v) -> pixel centres
        for a, b in BOX_EDGES:
            if corner_mask_S8[s, a] and corner_mask_S8[s, b]:
                pa, pb = (tuple(int(round(v)) for v in px[i]) for i in (a, b))
                cv2.line(out, pa, pb, colour, thickness, cv2.LINE_AA)
    return out


def _label(tile: np.ndarray, text: str, height: int | None = None) -> np.ndarray:
    """White text with a dark outline at the top left, sized for a tile `height` pixels high."""
    scale = max(0.35, min(0.6, (height or tile.shape[0]) / 300))
    y = int(6 + 22 * scale)
    cv2.putText(tile, text, (5, y), _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (5, y), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _grid(tiles: dict[str, np.ndarray], rows, H: int, W: int, gap: int = 2) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = []
    for names in rows:
        row = [np.pad(tiles[n], ((gap, gap), (gap, gap), (0, 0))) for n in names]
        row += [np.zeros((H + 2 * gap, W + 2 * gap, 3), np.uint8)] * (width - len(names))
        out.append(np.concatenate(row, axis=1))
    return np.concatenate(out, axis=0)


def compose_frame(clip: PreviewClip, t: int) -> np.ndarray:
    """The preview picture (RGB uint8, even height and width) of frame t of `clip`: a caption,
    the cameras' images with boxes and map drawn over them (or the overlay on black where there
    is no image), their control images, and the BEV on the right."""
    a = clip.arrays
    K, _, H, W = a["layout"].shape[1:5]
    rows = camera_grid(clip.cameras, a["cam_to_ego"][t])
    real, control = {}, {}
    for k, cam in enumerate(clip.cameras):
        base = clip.images[t, k] if clip.images is not None else np.zeros((H, W, 3), np.uint8)
        real[cam] = _label(overlay(base, a["layout"][t, k], a["box_corners"][t, k], a["box_corner_mask"][t, k],
                                   a["box_mask"][t, k], a["box_class"][t, k]),
                           cam if clip.images is not None else f"{cam} (no image)")
        control[cam] = _label(a["control"][t, k].copy(), f"{cam} control")
    top, bottom = _grid(real, rows, H, W), _grid(control, rows, H, W)
    picture = np.concatenate([top, np.full((4, top.shape[1], 3), 255, np.uint8), bottom], axis=0)
    if "bev" in a:
        bev = bev_colour(a["bev"][t])
        cy, cx = bev.shape[0] // 2, bev.shape[1] // 2
        cv2.arrowedLine(bev, (cx, cy + 6), (cx, cy - 8), (255, 255, 255), 2, tipLength=0.4)
        scale = picture.shape[0] / bev.shape[0]
        bev = cv2.resize(bev, (round(bev.shape[1] * scale), picture.shape[0]), interpolation=cv2.INTER_NEAREST)
        picture = np.concatenate([picture, np.pad(_label(bev, "BEV (forward up)", H), ((0, 0), (2, 0), (0, 0)))], axis=1)
    caption = f"{clip.source}  frame {int(a['frame_index'][t])}  t={int(a['timestamp_us'][t])} us"
    if clip.notes:
        caption += "  |  " + "; ".join(clip.notes)
    bar = np.zeros((22, picture.shape[1], 3), np.uint8)
    cv2.putText(bar, caption[: max(20, picture.shape[1] // 7)], (5, 15), _FONT, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    picture = np.concatenate([bar, picture], axis=0)
    # H.264 needs even sizes: pad by one pixel where needed.
    return np.pad(picture, ((0, picture.shape[0] % 2), (0, picture.shape[1] % 2), (0, 0)))
