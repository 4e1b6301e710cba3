"""Gradient fidelity of ChopGrad at CPU scale (issue 13), through ``benchmarks/gradient_fidelity.py``'s
own measurement: a window covering the video gives exactly the full gradient (latents and decoder
parameters), and on a trained decoder the truncated gradient's cosine to the full one rises with the
sliding window D.

"Trained": a tiny Wan 2.1 decoder fitted in this module (16 Adam steps of reconstruction
of smooth moving synthetic videos from the frozen random encoder's latents), so its cache carries
temporal structure; a random decoder carries none on purpose.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

import chopgrad_core as cg
from chopgrad_core.tiny import tiny_wan21

RTOL = 1e-5  # fp32 relative error the exactness claim is held to
COS_TOL = 1e-6  # what "non-decreasing" forgives: float32 noise in a cosine of ~1

FRAMES, HW = 17, (16, 16)  # 5 latent frames = 5 groups (G), 2x2 latents


def _load_benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gradient_fidelity.py"
    spec = importlib.util.spec_from_file_location("gradient_fidelity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gf = _load_benchmark()


def smooth_videos(n: int, seed: int) -> torch.Tensor:
    """(n, 3, FRAMES, H, W) in [-0.9, 0.9]: per channel a plane wave drifting over time, so each
    frame is predictable from the previous ones (what a causal decoder's cache can learn to use)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(FRAMES, dtype=torch.float32).view(1, 1, FRAMES, 1, 1)
    y = torch.linspace(0, 1, HW[0]).view(1, 1, 1, HW[0], 1)
    x = torch.linspace(0, 1, HW[1]).view(1, 1, 1, 1, HW[1])
    fy, fx = (torch.rand(2, n, 3, 1, 1, 1, generator=g) * 2 - 1) * 0.5 * math.pi
    speed = (torch.rand(n, 3, 1, 1, 1, generator=g) * 2 - 1) * 0.6
    phase = torch.rand(n, 3, 1, 1, 1, generator=g) * 2 * math.pi
    return 0.9 * torch.sin(fy * y + fx * x + speed * t + phase)


@pytest.fixture(scope="module")
def trained():
    """(vae, z, target): a decoder fitted for 16 Adam steps, and a held-out video's latents and frames."""
    torch.manual_seed(0)
    vae = tiny_wan21().requires_grad_(False)
    train, held_out = smooth_videos(4, seed=1), smooth_videos(1, seed=2)
    with torch.no_grad():
        z_train = vae.encode(train).latent_dist.mode()
        z_held = vae.encode(held_out).latent_dist.mode()

    def recon() -> float:
        return float(torch.nn.functional.mse_loss(cg.decode(vae, z_train), train))

    before = recon()
    params = cg.wrap(vae).parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=5e-3)
    for step in range(16):
        i = step % 4
        loss = cg.pixel_loss(vae, z_train[i:i + 1], train[i:i + 1], loss="mse", mode="full")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.requires_grad_(False)
    after = recon()
    assert after < before, f"the fit did not fit (reconstruction MSE {before:.4f} -> {after:.4f})"
    return vae, z_held, held_out


G = 5  # groups of FRAMES


@pytest.fixture(scope="module")
def rows(trained):
    """One measurement (one full-backprop reference): sliding D = 0..G-1 and past it, block k = G."""
    vae, z, target = trained
    assert len(cg.wrap(vae).groups(z.shape[2])) == G
    cases = [("sliding", d) for d in range(G)] + [("sliding", G + 1), ("block", G)]
    return {(r.mode, r.window): r for r in gf.measure(vae, z, target, cases=cases)}


def test_window_covering_the_video_equals_full_backprop(rows):
    for key in [("sliding", G - 1), ("sliding", G + 1), ("block", G)]:
        r = rows[key]
        assert r.exact
        assert r.rel_latents < RTOL, (key, r.rel_latents)
        assert r.rel_params < RTOL, (key, r.rel_params)


def test_cosine_rises_with_the_window_on_a_trained_decoder(rows):
    sliding = [rows[("sliding", d)] for d in range(G)]
    assert [r.exact for r in sliding] == [False] * (G - 1) + [True]
    for what in ("latents", "params"):
        cos = [getattr(r, f"cos_{what}") for r in sliding]
        # Truncation must matter here (else "rises" is vacuous): D=0 is measurably off the full gradient.
        assert getattr(sliding[0], f"rel_{what}") > 1e-3, (what, cos)
        for d in range(G - 1):
            assert cos[d + 1] >= cos[d] - COS_TOL, f"{what}: cosine fell from D={d} to D={d + 1}: {cos}"
        assert cos[-1] > 1 - RTOL and cos[0] < cos[-1]
