"""Batches -> model inputs: what the transformer is conditioned on, and the latents it learns.

A batch is what ``drivegen.data.dataset.ClipDataset`` yields (collated), or the same keys built
from a rendered scene's arrays (``batch_from_arrays``, generation's edited scenes): one code path
conditions training clips and generated ones.

Shape legend: B batch, T frames, K cameras, C channels, t latent frames, h w latent size,
H W image size.
"""

from __future__ import annotations

import numpy as np
import torch

import conditions
from drivegen.model.controlled_wan import pool_layout
from drivegen.model.objective import LatentSpace

__all__ = ["batch_from_arrays", "encode", "latent_frame_index", "prepare", "prepare_conditions"]


def latent_frame_index(num_frames: int) -> torch.Tensor:
    """Pixel frame that stands for each latent frame: 0, then the last frame of each group of 4."""
    return torch.tensor([0] + [4 * t for t in range(1, (num_frames - 1) // 4 + 1)])


def encode(vae, space: LatentSpace, video_BK3THW: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> normalised latents (B, K, C, t, h, w)."""
    b, k = video_BK3THW.shape[:2]
    z = vae.encode(video_BK3THW.flatten(0, 1)).latent_dist.mode()
    return space.normalise(z).unflatten(0, (b, k))


@torch.no_grad()
def prepare_conditions(batch: dict, vae, space: LatentSpace, device: torch.device) -> tuple[torch.Tensor, dict]:
    """A batch -> (control, cond): what the model is conditioned on, without the frames' own
    latents (generation has no frames to encode)."""
    control_video = batch["control"].to(device).permute(0, 2, 3, 1, 4, 5)  # (B, K, 3, T, H, W)
    z = encode(vae, space, control_video)
    layout = batch["layout"].to(device).float()  # (B, T, K, Cl, H, W) uint8 -> float
    layout[:, :, :, conditions.DEPTH_CHANNEL] /= 255.0
    keep = [c for c in range(layout.shape[3]) if c != conditions.INSTANCE_CHANNEL]
    pooled = pool_layout(layout[:, :, :, keep].permute(0, 2, 1, 3, 4, 5), z.shape[3], tuple(z.shape[-2:]))
    control = torch.cat([z, pooled], dim=2)  # (B, K, C + Cl, t, h, w)

    idx = latent_frame_index(layout.shape[1])

    def per_latent_frame(x):  # (B, T, K, ...) -> (B, K, t, ...)
        return x[:, idx].transpose(1, 2).to(device)

    cond = dict(box_corners=per_latent_frame(batch["box_corners"]), box_params=per_latent_frame(batch["box_params"]),
                box_class=per_latent_frame(batch["box_class"]), box_mask=per_latent_frame(batch["box_mask"]),
                intrinsics=batch["intrinsics"][:, 0].to(device), cam_to_ego=batch["cam_to_ego"][:, 0].to(device))
    return control, cond


@torch.no_grad()
def prepare(batch: dict, vae, space: LatentSpace, device: torch.device) -> tuple:
    """A batch -> (x0, frames, control, cond) as ``drivegen.model.objective.losses`` takes them."""
    frames = batch["images"].to(device).permute(0, 2, 3, 1, 4, 5)  # (B, T, K, 3, H, W) -> (B, K, 3, T, H, W)
    control, cond = prepare_conditions(batch, vae, space, device)
    return encode(vae, space, frames), frames, control, cond


def batch_from_arrays(arrays: dict, frames: slice) -> dict:
    """Rendered condition arrays (``drivegen.data.clips.render_clip_arrays``, T leading) -> a batch
    of one clip (B = 1) with the keys ``prepare_conditions`` reads (no images)."""
    def t(name):
        return torch.from_numpy(np.ascontiguousarray(arrays[name][frames])).unsqueeze(0)

    control = t("control").permute(0, 1, 2, 5, 3, 4).float() / 127.5 - 1.0  # (B, T, K, 3, H, W)
    return {"control": control, "layout": t("layout"),
            "box_corners": t("box_corners"), "box_params": t("box_params"), "box_class": t("box_class"),
            "box_mask": t("box_mask"), "intrinsics": t("intrinsics"), "cam_to_ego": t("cam_to_ego")}
