"""The layout probe: does a frame show what its layout says? Shared by evaluation and generation.

Controllability is measured the way MagicDrive, Panacea and others measure it: a perception model
trained on *real* frames reads the *generated* ones, and its output is compared with the controls
the generator was given. Here the perception model is a small segmentation network (the probe)
that predicts, per pixel, one class of the layout raster:

    class 0            background (no map layer, no agent)
    classes 1..8       map layers, ``conditions.MAP_CLASSES`` order
    classes 9..18      agents, ``conditions.BOX_CLASSES`` order

One class per pixel, by a stated priority (``layout_classes``): agents over map over background
(a car hides the lane under it); among map layers the later one in ``MAP_CLASSES`` wins (lines
over areas: a lane divider on the drivable area is a lane divider), which is also the order in
which the control image paints them. Agent channels are exclusive already (the nearest box owns
a pixel). The depth and instance channels carry no class; the instance channel gives each box's
footprint for box recall.

Scores (all from predictions ``pred`` (N, H, W) against ``layout_classes`` of the layout):
- ``Confusion`` accumulates a class confusion matrix; mIoU is the mean IoU over the classes that
  occur in the ground truth (as mmsegmentation counts it: a class the truth lacks has no IoU).
- ``BoxRecall``: a labelled box (``box_mask``) whose footprint in the raster (instance channel ==
  slot + 1) has at least ``min_pixels`` pixels is *visible*; it is *recalled* when the probe gives
  its class (``box_class``) to at least half of its footprint. Recall = recalled / visible.
  Boxes smaller than ``min_pixels`` are counted apart (``too_small``), never silently.

The probe's file (safetensors, written atomically) carries its metadata: classes, image size,
width, the store and train logs it learned from, and its mIoU on the real val frames (the
ceiling a generator can reach on this metric). By default it lies beside the store it was
trained on (``default_probe_path``), where evaluation writes it and generation finds it.

Shape legend: N images, C layout channels, H W image size, S box slots, K cameras, F frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import conditions
from conditions.taxonomy import BOX_COLOURS, MAP_COLOURS
from drivegen.errors import ProbeError

__all__ = ["BoxRecall", "Confusion", "FrameRecall", "LayoutProbe", "PROBE_CLASSES", "PROBE_PALETTE", "default_probe_path", "layout_classes",
           "load_probe", "save_probe"]

_NUM_MAP = len(conditions.MAP_CLASSES)
PROBE_CLASSES: tuple[str, ...] = ("background",) + tuple(conditions.MAP_CLASSES) + tuple(conditions.BOX_CLASSES)
"""The probe's classes: background, the map layers, the agent classes (see the module doc)."""
AGENT_OFFSET = 1 + _NUM_MAP
"""Probe class of BOX_CLASSES[0]: box class id c is probe class AGENT_OFFSET + c."""
PROBE_PALETTE: np.ndarray = np.array(
    [(16, 16, 16)] + [MAP_COLOURS[c] for c in conditions.MAP_CLASSES] + [BOX_COLOURS[c] for c in conditions.BOX_CLASSES],
    np.uint8)
"""(classes, 3) RGB: the control image's colours per class, near-black background (for drawing class maps)."""


def layout_classes(layout_NCHW: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Layout rasters (..., C, H, W) -> one probe class per pixel (..., H, W) int64, by priority:
    agents over map layers over background; a later map layer over an earlier one."""
    is_torch = isinstance(layout_NCHW, torch.Tensor)
    lay = layout_NCHW
    shape = lay.shape[:-3] + lay.shape[-2:]
    out = torch.zeros(shape, dtype=torch.int64, device=lay.device) if is_torch else np.zeros(shape, np.int64)
    # Painter's order: each later assignment overrides the earlier ones.
    for c in range(_NUM_MAP):
        out[lay[..., c, :, :] > 0] = 1 + c
    for j in range(len(conditions.BOX_CLASSES)):
        out[lay[..., _NUM_MAP + j, :, :] > 0] = AGENT_OFFSET + j
    return out


def default_probe_path(store: str | Path) -> Path:
    """Where the probe of a store lives by default: beside it, ``<store>.probe.safetensors``."""
    store = Path(store)
    return store.with_name(store.name + ".probe.safetensors")


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # GroupNorm, not BatchNorm: the same output in train and eval mode and for any batch size,
    # so probe scores do not depend on how frames are batched.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
                         nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class LayoutProbe(nn.Module):
    """A small U-Net: RGB frames in [-1, 1] (N, 3, H, W) -> class logits (N, len(PROBE_CLASSES), H, W).

    Two stride-2 stages and dilated convolutions give a receptive field of ~60 px (enough to tell
    a box face's shade from a road marking of the same hue at the sample sizes); skips at full and
    half resolution keep thin lane lines. H and W must be multiples of 4."""

    def __init__(self, width: int = 24, num_classes: int = len(PROBE_CLASSES)) -> None:
        super().__init__()
        w = width
        self.width, self.num_classes = width, num_classes
        # 1. Encoder: full, half and quarter resolution.
        self.enc1 = nn.Sequential(_block(3, w), _block(w, w))
        self.enc2 = nn.Sequential(_block(w, 2 * w, stride=2), _block(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_block(2 * w, 4 * w, stride=2), _block(4 * w, 4 * w, dilation=2),
                                  _block(4 * w, 4 * w, dilation=4))
        # 2. Decoder: upsample, concatenate the skip, convolve.
        self.dec2 = _block(4 * w + 2 * w, 2 * w)
        self.dec1 = _block(2 * w + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x_N3HW: torch.Tensor) -> torch.Tensor:
        h, w = x_N3HW.shape[-2:]
        if h % 4 or w % 4:
            raise ProbeError(f"probe input of {h}x{w} pixels: height and width must be multiples of 4")
        # 1. Encoder.
        f1 = self.enc1(x_N3HW)  # (N, w, H, W)
        f2 = self.enc2(f1)  # (N, 2w, H/2, W/2)
        f3 = self.enc3(f2)  # (N, 4w, H/4, W/4)
        # 2. Decoder.
        u2 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([u2, f2], dim=1))
        u1 = F.interpolate(d2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        d1 = self.dec1(torch.cat([u1, f1], dim=1))
        return self.head(d1)  # (N, classes, H, W)

    @torch.no_grad()
    def predict(self, frames: torch.Tensor | np.ndarray, batch: int = 32) -> torch.Tensor:
        """Frames (N, 3, H, W) float in [-1, 1], or (N, H, W, 3) uint8 -> classes (N, H, W) int64 (CPU)."""
        if isinstance(frames, np.ndarray):
            if frames.dtype != np.uint8 or frames.shape[-1] != 3:
                raise ProbeError(f"probe frames as numpy must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
            frames = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        out = [self(frames[i:i + batch].to(device).float()).argmax(1).cpu() for i in range(0, frames.shape[0], batch)]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, *frames.shape[-2:]), dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# File
# ----------------------------------------------------------------------------------------------


def save_probe(probe: LayoutProbe, path: str | Path, info: dict[str, Any]) -> Path:
    """The probe's weights and ``info`` (image size, store, logs, scores, ...) as one safetensors file, atomically."""
    from chopgrad_core.atomic import save_safetensors

    meta = {"format": "drivegen-layout-probe/1", "classes": json.dumps(PROBE_CLASSES), "width": str(probe.width),
            "info": json.dumps(info, default=str)}
    return save_safetensors(probe.state_dict(), path, metadata=meta)


def load_probe(path: str | Path, device: str | torch.device = "cpu", key: str = "probe") -> tuple[LayoutProbe, dict]:
    """(probe in eval mode, its info) from a file written by ``save_probe``; ProbeError naming
    ``key`` and the fix when it is missing, damaged or of other classes."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    fix = "train one with `python -m drivegen.evaluate.probe` (python -m drivegen.evaluate trains it when missing)"
    if not path.is_file():
        raise ProbeError(f"{key}={str(path)!r}: no layout probe there; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a truncated or foreign file
        raise ProbeError(f"{key}={str(path)!r} is not a readable probe file ({type(exc).__name__}: {exc}); {fix}") from None
    if meta.get("format") != "drivegen-layout-probe/1":
        raise ProbeError(f"{key}={str(path)!r} is not a layout probe file (format {meta.get('format')!r}); {fix}")
    if json.loads(meta["classes"]) != list(PROBE_CLASSES):
        raise ProbeError(f"{key}={str(path)!r} predicts other classes than this version's {len(PROBE_CLASSES)}; {fix}")
    probe = LayoutProbe(width=int(meta["width"]))
    probe.load_state_dict(state)
    return probe.to(device).eval().requires_grad_(False), json.loads(meta["info"])


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


@dataclass
class Confusion:
    """A confusion matrix over PROBE_CLASSES (rows: ground truth, columns: prediction)."""

    matrix: np.ndarray = field(default_factory=lambda: np.zeros((len(PROBE_CLASSES),) * 2, np.int64))

    def add(self, pred_NHW: torch.Tensor | np.ndarray, truth_NHW: torch.Tensor | np.ndarray) -> "Confusion":
        p = np.asarray(pred_NHW).reshape(-1).astype(np.int64)
        t = np.asarray(truth_NHW).reshape(-1).astype(np.int64)
        n = len(PROBE_CLASSES)
        self.matrix += np.bincount(t * n + p, minlength=n * n).reshape(n, n)
        return self

    def merge(self, other: "Confusion") -> "Confusion":
        self.matrix += other.matrix
        return self

    def iou(self) -> dict[str, float]:
        """IoU of every class that occurs in the truth (mmsegmentation's convention: a class without
        ground-truth pixels has no IoU; predicting it still costs the true classes' IoU)."""
        tp = np.diag(self.matrix).astype(np.float64)
        truth = self.matrix.sum(1)
        union = self.matrix.sum(0) + truth - tp
        return {PROBE_CLASSES[c]: float(tp[c] / union[c]) for c in range(len(PROBE_CLASSES)) if truth[c] > 0}

    def miou(self) -> float:
        iou = self.iou()
        return float(np.mean(list(iou.values()))) if iou else float("nan")


@dataclass
class BoxRecall:
    """Share of visible labelled boxes whose footprint the probe gives the right class on >= half of it."""

    min_pixels: int = 8
    """Footprints smaller than this (pixels) are counted as too small to score, not as visible."""
    visible: int = 0
    recalled: int = 0
    too_small: int = 0
    per_class: dict[str, list[int]] = field(default_factory=dict)  # class -> [recalled, visible]

    def add(self, pred_NHW: torch.Tensor | np.ndarray, layout_NCHW: torch.Tensor | np.ndarray,
            box_mask_NS: torch.Tensor | np.ndarray, box_class_NS: torch.Tensor | np.ndarray) -> "BoxRecall":
        """Predictions of N images against their layouts and box tokens (one camera image each)."""
        pred = np.asarray(pred_NHW)
        instance = np.asarray(layout_NCHW)[:, conditions.INSTANCE_CHANNEL]  # (N, H, W): slot + 1, 0 for none
        mask, cls = np.asarray(box_mask_NS), np.asarray(box_class_NS)
        for i in range(pred.shape[0]):
            slots = np.flatnonzero(mask[i])
            if not slots.size:
                continue
            # Pixels per instance id, and those of them predicted as the box's own class: one bincount each.
            ids = instance[i].reshape(-1).astype(np.int64)
            area = np.bincount(ids, minlength=mask.shape[1] + 1)
            want = np.zeros(mask.shape[1] + 1, np.int64)
            want[slots + 1] = AGENT_OFFSET + cls[i, slots]
            right = np.bincount(ids, weights=((pred[i].reshape(-1) == want[ids]) & (ids > 0)).astype(np.float64),
                                minlength=mask.shape[1] + 1)
            for s in slots:
                px = int(area[s + 1])
                if px < self.min_pixels:
                    self.too_small += 1
                    continue
                hit = int(right[s + 1] * 2 >= px)
                name = conditions.BOX_CLASSES[int(cls[i, s])]
                self.visible += 1
                self.recalled += hit
                counts = self.per_class.setdefault(name, [0, 0])
                counts[0] += hit
                counts[1] += 1
        return self

    def merge(self, other: "BoxRecall") -> "BoxRecall":
        self.visible += other.visible
        self.recalled += other.recalled
        self.too_small += other.too_small
        for k, (r, v) in other.per_class.items():
            counts = self.per_class.setdefault(k, [0, 0])
            counts[0] += r
            counts[1] += v
        return self

    @property
    def value(self) -> float:
        return self.recalled / self.visible if self.visible else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"box_recall": self.value, "visible_boxes": self.visible, "recalled_boxes": self.recalled,
                "boxes_too_small": self.too_small, "min_pixels": self.min_pixels,
                "per_class": {k: {"recalled": r, "visible": v} for k, (r, v) in sorted(self.per_class.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BoxRecall":
        return cls(min_pixels=d["min_pixels"], visible=d["visible_boxes"], recalled=d["recalled_boxes"],
                   too_small=d["boxes_too_small"],
                   per_class={k: [v["recalled"], v["visible"]] for k, v in d["per_class"].items()})


class FrameRecall:
    """Box recall of generated frames as they stream out (drivegen.generate): the store's probe
    (``default_probe_path``) reads each group of frames against the labels written for it. Without
    a probe (or with one of another image size) nothing is scored and ``as_dict`` says why."""

    def __init__(self, store: str | Path, image_hw: tuple[int, int], device: str | torch.device = "cpu",
                 min_pixels: int = 8) -> None:
        self.path = default_probe_path(store)
        self.probe: LayoutProbe | None = None
        self.note = ""
        self.recall = BoxRecall(min_pixels=min_pixels)
        if not self.path.is_file():
            self.note = (f"not computed: no layout probe at {str(self.path)!r}; train one with `python -m "
                         f"drivegen.evaluate.probe store={store}` (python -m drivegen.evaluate trains it too)")
            return
        probe, info = load_probe(self.path, device, key="probe")
        if list(info["image_size"]) != list(image_hw):
            self.note = (f"not computed: the probe {str(self.path)!r} reads {info['image_size']} frames, these are "
                         f"{list(image_hw)}")
            return
        self.probe = probe

    def add(self, frames_KFHW3: np.ndarray, layout_FKCHW: np.ndarray, box_mask_FKS: np.ndarray,
            box_class_FKS: np.ndarray) -> None:
        """One group of generated frames (uint8) with the conditions they were generated from."""
        if self.probe is None:
            return
        frames = np.ascontiguousarray(frames_KFHW3.swapaxes(0, 1)).reshape(-1, *frames_KFHW3.shape[2:])  # (F*K, H, W, 3)
        pred = self.probe.predict(frames)
        self.recall.add(pred, layout_FKCHW.reshape(-1, *layout_FKCHW.shape[2:]),
                        box_mask_FKS.reshape(-1, box_mask_FKS.shape[-1]), box_class_FKS.reshape(-1, box_class_FKS.shape[-1]))

    def as_dict(self) -> dict[str, Any]:
        if self.probe is None:
            return {"box_recall": None, "note": self.note}
        return self.recall.as_dict() | {"probe": str(self.path)}
