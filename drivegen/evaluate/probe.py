"""``python -m drivegen.evaluate.probe [key=value ...]``: train the layout probe of a store (configs/evaluate.yaml).

The probe (``drivegen.model.probe``) learns, from the REAL frames of the store's train split, to
predict each pixel's layout class (background, map layers, agent classes). It is then scored on
the real frames of the val split: that mIoU (and box recall) is the ceiling a generator can reach
on the same metrics, since the probe reads generated frames exactly as it reads real ones.

Steps:
1. Frames: every camera frame of every clip of the split (all rigs of the store; the probe sees
   single images, so rigs mix freely), with their layout classes (``layout_classes``).
2. Train: Adam with cosine decay, cross-entropy weighted by the inverse square root of each
   class's pixel share (thin lane lines and small agents would otherwise be ignored next to the
   road surface), random horizontal flips (the classes have no handedness), and in a share of
   the batches (``probe.augment``) photometric degradation (``degrade``), so that the probe reads
   where things are rather than how sharp or noisy the camera was.
3. Score on the val frames; save weights and scores, atomically, to ``probe.path`` (default: beside
   the store). With no val clips (a store written without a split) the ceiling is not computed.

Shape legend: N frames, C layout channels, H W image size, S box slots.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from chopgrad_core.progress import progress as progress_bar
from drivegen.errors import DrivegenError, EvaluateConfigError
from drivegen.evaluate.config import EvaluateConfig
from drivegen.model.probe import (PROBE_CLASSES, BoxRecall, Confusion, LayoutProbe, default_probe_path,
                                  layout_classes, save_probe)

__all__ = ["degrade", "load_frames", "probe_path", "score_real", "split_logs", "train_probe"]


def degrade(x_N3HW: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Frames in [-1, 1] with a random photometric degradation per frame: Gaussian blur (sigma 0 to
    1.5 px), sensor noise (std 0 to 0.06), brightness (+-0.1) and contrast (x 0.85 to 1.15).
    Written here rather than taken from torchvision: PyPI's torchvision does not load beside the
    pinned CPU torch (an operator registration error), and this is two convolutions."""
    n = x_N3HW.shape[0]
    u = torch.rand(n, 4, generator=gen)
    sigma = 1.5 * u[:, 0]
    r = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-0.5 * (r[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (N, 7): sigma ~0 gives the identity kernel
    c = x_N3HW.shape[1]
    # Separable blur as a grouped convolution: one kernel per frame, shared by its channels.
    y = x_N3HW.reshape(1, n * c, *x_N3HW.shape[2:])
    kk = k.repeat_interleave(c, dim=0)
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), kk[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), kk[:, None, :, None], groups=n * c)
    y = y.reshape_as(x_N3HW)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (0.85 + 0.3 * u[:, 2]).view(n, 1, 1, 1)
    bright = (0.2 * u[:, 3] - 0.1).view(n, 1, 1, 1)
    noise = torch.randn(y.shape, generator=gen) * (0.06 * u[:, 1]).view(n, 1, 1, 1)
    return ((y - mean) * contrast + mean + bright + noise).clamp(-1, 1)


def probe_path(cfg: EvaluateConfig, store: Path) -> Path:
    return Path(cfg.probe.path).expanduser() if cfg.probe.path else default_probe_path(store)


def _split_datasets(store: Path, split: str) -> list[str]:
    from drivegen.data.store import CLIPS, open_root

    root = open_root(str(store))
    return sorted({g.attrs["dataset"] for _, g in root[CLIPS].groups() if g.attrs.get("split") == split})


def split_logs(store: Path, split: str) -> list[str]:
    """Logs of the split's clips that have camera images (what the probe learns from or is scored on)."""
    from drivegen.data.store import CLIPS, open_root

    root = open_root(str(store))
    return sorted({g.attrs["log"] for _, g in root[CLIPS].groups()
                   if g.attrs.get("split") == split and g.attrs.get("has_images")})


def load_frames(store: Path, split: str) -> dict[str, Any]:
    """Every camera frame with images of the split's clips, as (N, ...) tensors, and the logs they come from."""
    from drivegen.data.dataset import ClipDataset

    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("images", "layout", "box_mask", "box_class")}
    logs: set[str] = set()
    for dataset in _split_datasets(store, split):
        ds = ClipDataset(store, split=split, datasets=[dataset])
        for i in range(len(ds)):
            item = ds[i]
            if not bool(item["has_images"]):  # conditions-only clips have no real frames to learn from
                continue
            logs.add(item["log"])
            parts["images"].append(item["images"].flatten(0, 1))  # (T*K, 3, H, W)
            parts["layout"].append(item["layout"].flatten(0, 1))  # (T*K, C, H, W)
            parts["box_mask"].append(item["box_mask"].flatten(0, 1))
            parts["box_class"].append(item["box_class"].flatten(0, 1))
    if not parts["images"]:
        return {"n": 0, "logs": []}
    return {k: torch.cat(v) for k, v in parts.items()} | {"n": sum(len(x) for x in parts["images"]),
                                                           "logs": sorted(logs)}


def score_real(probe: LayoutProbe, frames: dict[str, Any], min_box_pixels: int) -> dict[str, Any]:
    """mIoU, per-class IoU and box recall of the probe on real frames (``load_frames``)."""
    pred = probe.predict(frames["images"])
    confusion = Confusion().add(pred, layout_classes(frames["layout"]))
    recall = BoxRecall(min_pixels=min_box_pixels).add(pred, frames["layout"], frames["box_mask"], frames["box_class"])
    return {"miou": confusion.miou(), "iou": confusion.iou(), **recall.as_dict(), "frames": frames["n"]}


def train_probe(cfg: EvaluateConfig, store: Path, show_progress: bool = True) -> tuple[LayoutProbe, dict[str, Any]]:
    """Train, score and save the probe of ``store`` (see the module doc); returns it with its info."""
    pc = cfg.probe
    t0 = time.perf_counter()
    # 1. Frames.
    train = load_frames(store, "train")
    if not train["n"]:
        raise EvaluateConfigError(f"the store {str(store)!r} has no train-split frames with images to train the layout "
                                  "probe on; preprocess it with a split (split.val_logs / split.val_fraction) or set "
                                  "probe.path to a trained probe")
    images, classes = train["images"], layout_classes(train["layout"])
    n, (h, w) = len(images), images.shape[-2:]
    # 2. Train.
    torch.manual_seed(pc.seed)
    gen = torch.Generator().manual_seed(pc.seed)
    share = torch.bincount(classes.flatten(), minlength=len(PROBE_CLASSES)).double() / classes.numel()
    weight = torch.where(share > 0, (share + 1e-4).rsqrt(), torch.zeros_like(share))
    weight = (weight / weight[share > 0].mean()).float()
    device = torch.device(cfg.torch_device())  # batches are drawn and degraded on the CPU, then moved
    probe = LayoutProbe(width=pc.width).to(device)
    weight = weight.to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=pc.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=pc.steps)
    bar = progress_bar(range(pc.steps), desc="probe", unit="step", disable=not show_progress)
    for step in bar:
        idx = torch.randint(0, n, (min(pc.batch_size, n),), generator=gen)
        x, y = images[idx], classes[idx]
        if torch.rand((), generator=gen) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if torch.rand((), generator=gen) < pc.augment:
            x = degrade(x, gen)
        loss = F.cross_entropy(probe(x.to(device)), y.to(device), weight=weight)
        if not torch.isfinite(loss):
            raise DrivegenError(f"probe training: non-finite loss at step {step}; lower probe.lr={pc.lr}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    probe.eval()
    # 3. Score and save.
    val = load_frames(store, "val")
    info: dict[str, Any] = {
        "store": str(store.resolve()), "image_size": [int(h), int(w)], "train_logs": train["logs"],
        "train_frames": n, "val_logs": val["logs"], "steps": pc.steps, "batch_size": pc.batch_size, "lr": pc.lr,
        "augment": pc.augment,
        "seed": pc.seed, "class_share": {PROBE_CLASSES[c]: float(s) for c, s in enumerate(share) if s > 0},
        "train": score_real(probe, train, pc.min_box_pixels),
        "val": score_real(probe, val, pc.min_box_pixels) if val["n"] else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    probe = probe.cpu()
    save_probe(probe, probe_path(cfg, store), info)
    return probe, info


def format_probe(info: dict[str, Any], path: Path) -> str:
    def row(name: str, s: dict | None) -> tuple[str, ...]:
        if s is None:
            return (name, "0", "not computed (no val clips)", "", "")
        return (name, str(s["frames"]), f"{s['miou']:.3f}", f"{s['box_recall']:.3f}", str(s["visible_boxes"]))

    from drivegen.workpool import format_table

    return format_table(("real frames", "frames", "mIoU", "box recall", "boxes"),
                        [row("train", info["train"]), row("val (the ceiling)", info["val"])],
                        [f"layout probe {path} ({info['seconds']:.0f} s; train logs {info['train_logs']})"])


def main_from_config(cfg: EvaluateConfig) -> dict[str, Any]:
    """Train the probe of the store that ``cfg`` names (its own, or the checkpoint's)."""
    from drivegen.evaluate.run import resolve_store

    store = resolve_store(cfg)
    torch.set_flush_denormal(True)
    _, info = train_probe(cfg, store, cfg.progress)
    print(format_probe(info, probe_path(cfg, store)), file=sys.stderr)
    return info


if __name__ == "__main__":
    from drivegen.config import cli

    cli("evaluate", EvaluateConfig, lambda config: main_from_config(config) and None)()
