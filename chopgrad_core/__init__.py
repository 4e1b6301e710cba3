"""chopgrad_core: constant-memory pixel losses through causal video VAE decoders (ChopGrad).

    decoder = chopgrad_core.wrap(vae)                   # diffusers AutoencoderKLWan / AutoencoderKLCogVideoX
    frames = chopgrad_core.decode(decoder, latents)     # == vae.decode(latents).sample, no grad, streaming
    loss = chopgrad_core.pixel_loss(decoder, latents, target, loss="l1", mode="sliding", window=1)
    loss.backward()                                     # truncated gradient into latents' producer

No driving knowledge lives here (and nothing of ``drivegen`` is imported). Layout:

- ``engine.py`` (the algorithm, window by window), ``decoder.py`` (the causal cache and groups),
  ``adapters/`` (one file per VAE family), ``config.py`` (``ChopGradConfig`` and its presets);
- ``losses.py``, ``ssim.py``, ``lpips.py``: the pixel losses (LPIPS from a local weights file);
- ``heads/``: task heads on top (super-resolution, inpainting, enhancement) with their data,
  metrics, ``python -m chopgrad_core.heads.finetune`` and ``python -m chopgrad_core.heads.restore``;
- shared infrastructure, also used by ``drivegen``: ``errors.py`` (every error type),
  ``atomic.py`` (every artefact is written through it), ``video.py`` (mp4 and frame folders;
  the streaming ``Mp4Writer``), ``progress.py`` (progress bars readable in logs), ``tiny.py``
  (tiny random-initialised VAEs for CPU runs).
"""

from chopgrad_core.adapters import wrap
from chopgrad_core.decoder import CausalCache, CausalDecoder, Group
from chopgrad_core.engine import MODES, decode, pixel_loss
from chopgrad_core.losses import L1, MSE, MSSSIM, SSIM, LPIPSLoss, PixelLoss

__all__ = [
    "wrap", "decode", "pixel_loss", "MODES",
    "CausalDecoder", "CausalCache", "Group",
    "PixelLoss", "L1", "MSE", "SSIM", "MSSSIM", "LPIPSLoss",
]
