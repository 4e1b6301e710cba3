"""Tiny random-initialised VAEs of every supported family: the embedded default model (trained from
scratch on the CPU by `make train` and the heads), the tests and the CPU benchmarks."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan


def tiny_wan21() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()


def tiny_wan22() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=12, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            is_residual=True, patch_size=2, in_channels=12, out_channels=12,
                            scale_factor_spatial=16).eval()


def tiny_cogvideox() -> AutoencoderKLCogVideoX:
    torch.manual_seed(0)
    return AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                  norm_num_groups=2).eval()
