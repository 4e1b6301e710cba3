"""Every pixel loss decomposes over frame groups: truncated modes give the full loss and, with a
window covering the video, the full gradient."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

import chopgrad_core as cg
from chopgrad_core.lpips import LPIPS
from chopgrad_core.tiny import tiny_wan21


@pytest.fixture(scope="module")
def setup():
    vae = tiny_wan21().requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 16, 3, 4, 6, generator=g)
    target = (cg.decode(vae, z) + 0.3 * torch.randn(1, 3, 9, 32, 48, generator=g)).clamp(-1, 1)
    return vae, z, target


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "lpips_alex.safetensors"
    # Trained LPIPS linear layers are non-negative (a distance); random ones need not be.
    state = {k: (v.abs() if k.startswith("lin") else v).contiguous() for k, v in LPIPS(net="alex").state_dict().items()}
    safetensors.torch.save_file(state, str(path))
    return path


def grads(vae, z, target, **kw):
    zz = z.clone().requires_grad_()
    loss = cg.pixel_loss(vae, zz, target, **kw)
    loss.backward()
    return loss.detach(), zz.grad


class TestLossesThroughTheEngine:
    """SSIM, MS-SSIM, LPIPS and weighted sums: sliding with D = G-1 equals full, value and gradient."""

    @pytest.mark.parametrize("loss", ["mse", "ssim", cg.MSSSIM(weights=(0.5, 0.5)), {"l1": 1.0, "ssim": 0.5}],
                             ids=["mse", "ssim", "ms_ssim", "l1+ssim"])
    def test_window_covering_video_equals_full(self, setup, loss):
        vae, z, target = setup
        full_loss, full_grad = grads(vae, z, target, loss=loss, mode="full")
        loss_value, grad = grads(vae, z, target, loss=loss, mode="sliding", window=2)
        assert torch.allclose(loss_value, full_loss, rtol=1e-5)
        assert float((grad - full_grad).norm() / full_grad.norm()) < 1e-5

    def test_lpips_from_local_weights_equals_full(self, setup, lpips_file):
        vae, z, target = setup
        loss = cg.LPIPSLoss(lpips_file, net="alex")
        full_loss, full_grad = grads(vae, z, target, loss=loss, mode="full")
        loss_value, grad = grads(vae, z, target, loss=loss, mode="sliding", window=2)
        assert full_loss > 0
        assert torch.allclose(loss_value, full_loss, rtol=1e-5)
        assert float((grad - full_grad).norm() / full_grad.norm()) < 1e-5

    def test_ssim_of_perfect_reconstruction_is_zero(self, setup):
        vae, z, _ = setup
        assert float(cg.pixel_loss(vae, z, cg.decode(vae, z), loss="ssim")) < 1e-6
