"""chopgrad_core: constant-memory pixel losses through causal video VAE decoders (ChopGrad).

    decoder = chopgrad_core.wrap(vae)                   # diffusers AutoencoderKLWan / AutoencoderKLCogVideoX
    frames = chopgrad_core.decode(decoder, latents)     # == vae.decode(latents).sample, no grad, streaming
    loss = chopgrad_core.pixel_loss(decoder, latents, target, loss="l1", mode="sliding", window=1)
    loss.backward()                                     # truncated gradient into latents' producer

No driving knowledge lives here; see ``engine`` for the algorithm and ``adapters`` per VAE family.
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
