"""The VAE (and optionally the transformer) a run starts from.

- ``tiny_vae``: the randomly initialised Wan 2.1-layout VAE, its latent statistics fitted to the data.
- ``load_vae``: the VAE ``model.vae`` names: ``sample`` (the tiny VAE fitted to the sample world,
  shipped in ``drivegen/model/assets/sample_vae``: the embedded default's), a local
  AutoencoderKLWan folder (for instance one fitted to a store's training frames by
  ``python -m drivegen.model.fit_vae``), or null (``tiny_vae``, random).
- ``load_pretrained``: a transformer and VAE from a local diffusers-format folder (never downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch

from drivegen.errors import ConfigError

__all__ = ["SAMPLE_VAE", "fit_latent_stats", "load_pretrained", "load_vae", "tiny_vae"]

SAMPLE_VAE = Path(__file__).resolve().parent / "assets" / "sample_vae"
"""``model.vae=sample``: a tiny Wan 2.1-layout VAE (base_dim 16, 16 latent channels, 4x spatial and
4x temporal compression, 213k parameters, 0.9 MB) fitted as an autoencoder at 64x112 to the sample
world's train-split frames and to seven more sample worlds' first two scenes (never
scene-drivegen-0003 or the Waymo segment, which make train holds out as val), so the embedded
default never downloads weights and starts from a decoder that draws the sample world. Made with
``python -m drivegen.model.fit_vae --spatial 4 --base-dim 16`` on one H200 (4400 steps in three
fits); its card, with the commands and how well it reconstructs the val split, is README.md beside
the weights."""


def fit_latent_stats(vae, data, clips: int = 8, device: torch.device | str | None = None):
    """Per-channel latent mean and std over a few clips of ``data`` into ``vae.config`` (what
    ``drivegen.model.objective.LatentSpace`` normalises with), encoded on ``device`` (None: where
    the VAE is; the VAE is left there). On the CPU a full-size clip takes minutes."""
    if device is not None:
        vae.to(device)
    at = next(vae.parameters()).device
    with torch.no_grad():
        z = torch.cat([vae.encode(data[i]["images"].permute(1, 2, 0, 3, 4).to(at, vae.dtype)).latent_dist.mode().float()
                       for i in range(min(clips, len(data)))])  # (N*K, C, t, h, w)
    vae.register_to_config(latents_mean=z.mean(dim=(0, 2, 3, 4)).tolist(),
                           latents_std=z.std(dim=(0, 2, 3, 4)).clamp_min(1e-6).tolist())
    return vae


def load_vae(name: str | None, data=None, key: str = "model.vae", device: torch.device | str | None = None):
    """The VAE ``model.vae`` names (see the module doc), its latent statistics fitted to ``data``
    on ``device`` (where the VAE is then left; None: the CPU)."""
    if name is None:
        return tiny_vae(data, device=device)
    from diffusers import AutoencoderKLWan

    folder = SAMPLE_VAE if name == "sample" else Path(name).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}={name!r}: no VAE at {str(folder)!r} (config.json missing); set {key} to a local "
                          "AutoencoderKLWan folder (diffusers save_pretrained layout), sample for the "
                          "VAE fitted to the sample world, or null for a random tiny VAE; `python -m drivegen.model.fit_vae` fits one on a store")
    vae = AutoencoderKLWan.from_pretrained(folder, local_files_only=True).requires_grad_(False)
    return fit_latent_stats(vae, data, device=device) if data is not None else vae


def tiny_vae(data=None, clips: int = 8, device: torch.device | str | None = None):
    """The randomly initialised Wan 2.1-layout VAE the embedded default trains with.

    Its latent statistics come from the data (``data``: a ClipDataset): Wan's published
    ``latents_mean/std`` describe the real Wan VAE, and on a random one they leave the clip-to-clip
    content at ~0.1% of the latent variance, so the flow-matching loss cannot see the controls.
    Per-channel statistics over a few clips put the content back at ~25% (measured on the sample logs)."""
    from chopgrad_core.tiny import tiny_wan21

    vae = tiny_wan21().requires_grad_(False)
    return fit_latent_stats(vae, data, clips, device) if data is not None else vae


def load_pretrained(folder: str, key: str = "model.pretrained"):
    """(WanVACETransformer3DModel, AutoencoderKLWan) from a local diffusers-format folder; a missing
    part is an error naming the config ``key``."""
    from diffusers import AutoencoderKLWan, WanVACETransformer3DModel

    root = Path(folder)
    for part in ("transformer", "vae"):
        if not (root / part / "config.json").is_file():
            raise ConfigError(f"{key}={folder!r} has no {part}/config.json; point {key} at a local folder with "
                              "transformer/ and vae/ (diffusers save_pretrained layout); nothing is downloaded")
    return (WanVACETransformer3DModel.from_pretrained(root / "transformer", local_files_only=True),
            AutoencoderKLWan.from_pretrained(root / "vae", local_files_only=True))
