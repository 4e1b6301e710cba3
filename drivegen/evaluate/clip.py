"""One val clip -> its scores: ``ClipEvaluator(plan)(item)``, in this process or on a Ray actor.

The evaluator loads the checkpoint, the probe and the feature networks once, then per clip:

1. Conditions: the clip as a training batch (``ClipDataset``), conditioned exactly as in training
   (``drivegen.model.conditioning.prepare_conditions``).
2. Videos of five methods, all (T, K, 3, H, W) in [-1, 1]:
   - ``generated``: sampled from the clip's own conditions (``drivegen.model.sampler.sample_latents``,
     seed = sampler.seed + a stable hash of the clip's name), decoded by the checkpoint's VAE;
   - ``swapped``: sampled from ANOTHER val clip's conditions with the same noise: what a model that
     ignores its controls scores (the gap to ``generated`` is what the controls buy);
   - ``mean_frame``: the per-pixel mean frame of the train split, every frame and camera;
   - ``autoencoded``: the real frames through the checkpoint's VAE (encode, then decode): what a
     perfect transformer could give at best; the gap to ``ground_truth`` is the VAE's share of
     what generation loses, the gap to ``generated`` the transformer's;
   - ``ground_truth``: the real frames (the ceiling: PSNR inf, FID 0, the probe's own mIoU).
3. Scores of each method against this clip's real frames and layout: PSNR, SSIM, flicker and LPIPS
   per camera video (``chopgrad_core.heads.metrics.Scorer``), the probe's confusion matrix and box
   recall over every frame and camera (``drivegen.model.probe``), FID / FVD features when the
   feature networks are configured (the distances need every clip: ``drivegen.evaluate.run``).
4. Files, each atomic: ``mosaics/<clip>.png`` (generated | ground truth | probe on generated |
   layout, one column per camera), ``clips/<clip>.features.safetensors``, and last
   ``clips/<clip>.json`` carrying the clip's key (a clip whose JSON has the current key is skipped).

Shape legend: T frames, K cameras, C layout channels, H W image size, N = T*K frames, D features.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import chopgrad_core
from chopgrad_core.atomic import save_safetensors, write_json, write_png
from chopgrad_core.video import mosaic, to_uint8
from drivegen.errors import WeightsFileError
from drivegen.evaluate.config import EvaluateConfig
from drivegen.model.checkpoint import load_trained
from drivegen.model.conditioning import prepare_conditions
from drivegen.model.objective import LatentSpace
from drivegen.model.probe import PROBE_PALETTE, BoxRecall, Confusion, layout_classes, load_probe
from drivegen.model.sampler import sample_latents

__all__ = ["METHODS", "ClipEvaluator", "clip_seed", "finished"]

METHODS = ("generated", "swapped", "mean_frame", "autoencoded", "ground_truth")


def clip_seed(base: int, name: str) -> int:
    """The clip's noise seed: independent of evaluation order and of the actor that runs it."""
    return (base + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")) % 2**31


def finished(folder: Path, name: str, key: str) -> bool:
    """Whether the clip's result file exists with this key."""
    try:
        return json.loads((folder / "clips" / f"{name}.json").read_text()).get("key") == key
    except (OSError, ValueError):
        return False


class ClipEvaluator:
    """Loads everything once; ``__call__(item)`` evaluates one clip (see the module doc) and returns its row."""

    def __init__(self, cfg: EvaluateConfig, plan: dict[str, Any]) -> None:
        from chopgrad_core.heads.metrics import Scorer
        from drivegen.data.dataset import ClipDataset
        from drivegen.evaluate.features import FrameFeatures, VideoFeatures

        self.cfg, self.plan = cfg, plan
        self.out = Path(plan["folder"])
        self.device = torch.device(plan["device"])
        trained = load_trained(plan["checkpoint"], self.device, ema=cfg.ema, key="checkpoint")
        self.model, self.vae = trained.model, trained.vae
        self.space = LatentSpace(self.vae)
        self.decoder = chopgrad_core.wrap(self.vae)
        self.data = ClipDataset(plan["store"], **plan["dataset"])
        self.probe, _ = load_probe(plan["probe"], self.device, key="probe.path")
        if cfg.lpips_weights and not Path(cfg.lpips_weights).expanduser().is_file():
            raise WeightsFileError(f"lpips_weights={cfg.lpips_weights!r}: no such file; build it with "
                                   "`python -m chopgrad_core.lpips convert` or set lpips_weights=null")
        self.scorer = Scorer(cfg.lpips_weights)
        self.fid = FrameFeatures(cfg.fid_weights, self.device) if cfg.fid_weights else None
        self.fvd = VideoFeatures(cfg.fvd_weights, self.device) if cfg.fvd_weights else None
        self.mean_frame = torch.from_numpy(np.load(plan["mean_frame"]))  # (3, H, W) in [-1, 1]

    # -- 2. videos ------------------------------------------------------------------------------

    def _batch(self, index: int) -> dict:
        return torch.utils.data.default_collate([self.data[index]])

    @torch.no_grad()
    def generate(self, batch: dict, seed: int) -> torch.Tensor:
        """(T, K, 3, H, W) in [-1, 1] sampled from the batch's conditions."""
        control, cond = prepare_conditions(batch, self.vae, self.space, self.device)
        T, K, _, H, W = batch["control"].shape[1:]
        s = self.vae.config.scale_factor_spatial
        shape = (1, K, self.space.mean.shape[1], (T - 1) // 4 + 1, H // s, W // s)
        sc = self.cfg.sampler
        latents = sample_latents(self.model, control, cond, shape, (H, W), steps=sc.steps, seed=seed,
                                 shift=sc.shift, guidance=sc.guidance)
        z = self.space.denormalise(latents.flatten(0, 1).float()).to(next(self.vae.parameters()).dtype)
        video = chopgrad_core.decode(self.decoder, z)  # (K, 3, T, H, W)
        return video.float().clamp(-1, 1).permute(2, 0, 1, 3, 4).cpu()  # (T, K, 3, H, W)

    @torch.no_grad()
    def autoencode(self, truth: torch.Tensor) -> torch.Tensor:
        """The real frames (T, K, 3, H, W) through the VAE: encode (posterior mode), decode."""
        dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode(truth.permute(1, 2, 0, 3, 4).to(self.device, dtype)).latent_dist.mode()
        video = chopgrad_core.decode(self.decoder, z)  # (K, 3, T, H, W)
        return video.float().clamp(-1, 1).permute(2, 0, 1, 3, 4).cpu()

    # -- 3. scores ------------------------------------------------------------------------------

    def score(self, video: torch.Tensor, truth: torch.Tensor, layout: torch.Tensor, box_mask: torch.Tensor,
              box_class: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor, dict[str, np.ndarray]]:
        """(scores, probe classes (T, K, H, W), features) of one method's video against the clip."""
        T, K = video.shape[:2]
        fidelity = [self.scorer(video[:, k].transpose(0, 1), truth[:, k].transpose(0, 1)) for k in range(K)]
        scores: dict[str, Any] = {m: float(np.mean([f[m] for f in fidelity])) for m in fidelity[0]}
        frames = video.flatten(0, 1)  # (N, 3, H, W)
        pred = self.probe.predict(frames)  # (N, H, W)
        lay = layout.flatten(0, 1)
        scores["confusion"] = Confusion().add(pred, layout_classes(lay)).matrix.tolist()
        scores["box_recall"] = BoxRecall(self.cfg.probe.min_box_pixels).add(
            pred, lay, box_mask.flatten(0, 1), box_class.flatten(0, 1)).as_dict()
        features = {}
        if self.fid is not None:
            features["fid"] = self.fid(frames)
        if self.fvd is not None:
            features["fvd"] = self.fvd(video.permute(1, 2, 0, 3, 4))  # (K, 3, T, H, W): one video per camera
        return scores, pred.unflatten(0, (T, K)), features

    # -- all steps ------------------------------------------------------------------------------

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        name, key = item["name"], item["key"]
        if finished(self.out, name, key):
            return {"clip": name, "status": "skipped", "seconds": 0.0}
        # 1. Conditions (and the real frames).
        batch = self._batch(item["index"])
        if not bool(batch["has_images"][0]):
            return {"clip": name, "status": "failed", "seconds": 0.0,
                    "reason": "the clip has no camera images (a conditions-only log): nothing to compare against"}
        truth = batch["images"][0]  # (T, K, 3, H, W)
        layout, box_mask, box_class = batch["layout"][0], batch["box_mask"][0], batch["box_class"][0]
        # 2. Videos.
        seed = clip_seed(self.cfg.sampler.seed, name)
        videos = {"generated": self.generate(batch, seed)}
        if item["swap_index"] is not None:
            videos["swapped"] = self.generate(self._batch(item["swap_index"]), seed)
        videos["mean_frame"] = self.mean_frame.expand_as(truth)
        videos["autoencoded"] = self.autoencode(truth)
        videos["ground_truth"] = truth
        # 3. Scores.
        scores, features, probe_generated = {}, {}, None
        for method, video in videos.items():
            scores[method], pred, feats = self.score(video, truth, layout, box_mask, box_class)
            features.update({f"{method}.{k}": torch.from_numpy(v) for k, v in feats.items()})
            if method == "generated":
                probe_generated = pred
        # 4. Files: mosaic, features, then the result (last: it marks the clip finished).
        self.write_mosaic(name, videos["generated"], truth, probe_generated, layout)
        if features:
            save_safetensors(features, self.out / "clips" / f"{name}.features.safetensors")
        row = {"clip": name, "status": "evaluated", "key": key, "seed": seed, "log": item["log"],
               "swapped_with": item["swap_name"], "frames": int(truth.shape[0]), "cameras": list(self.data.cameras),
               "scores": scores, "features": bool(features), "mosaic": f"mosaics/{name}.png",
               "seconds": round(time.perf_counter() - t0, 3)}
        write_json(self.out / "clips" / f"{name}.json", row)
        return row

    def write_mosaic(self, name: str, generated: torch.Tensor, truth: torch.Tensor, probe_TKHW: torch.Tensor,
                     layout: torch.Tensor) -> None:
        """Rows generated | ground truth | probe on generated | layout classes; one column per camera."""
        from PIL import Image, ImageDraw

        f = min(self.cfg.mosaic_frame, generated.shape[0] - 1)
        rows = [to_uint8(generated[f]), to_uint8(truth[f]), PROBE_PALETTE[probe_TKHW[f].numpy()],
                PROBE_PALETTE[layout_classes(layout[f]).numpy()]]  # each (K, H, W, 3)
        grid = mosaic([r[None] for r in rows])[0]  # (4H + gaps, K W + gaps, 3)
        labels = ("generated", "ground truth", "probe on generated", "layout")
        label_w, h = 112, rows[0].shape[1]
        canvas = Image.new("RGB", (grid.shape[1] + label_w, grid.shape[0] + 14), (255, 255, 255))
        canvas.paste(Image.fromarray(grid), (label_w, 14))
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 1), f"{name}  frame {f}", fill=(0, 0, 0))
        for i, text in enumerate(labels):
            draw.text((4, 14 + i * (h + 2) + h // 2 - 5), text, fill=(0, 0, 0))
        write_png(self.out / "mosaics" / f"{name}.png", np.asarray(canvas))
