"""Specification of chopgrad_core.ssim: SSIM / MS-SSIM against scikit-image and pytorch_msssim."""

from __future__ import annotations

import pytest
import torch

from chopgrad_core.errors import ShapeError
from chopgrad_core.ssim import ms_ssim, ssim, ssim_map

skimage_metrics = pytest.importorskip("skimage.metrics")
pytorch_msssim = pytest.importorskip("pytorch_msssim")


def _pair(
    n: int, c: int, h: int, w: int, noise: float = 0.3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth-plus-texture image and a noisy copy, both in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.8, 0.8, w).expand(n, c, h, w)
    x = (ramp + 0.2 * torch.rand(n, c, h, w, generator=g)).clamp(-1, 1)
    y = (x + noise * torch.randn(n, c, h, w, generator=g)).clamp(-1, 1)
    return x, y


class TestSSIM:
    """ssim_map is the Wang et al. 2004 SSIM over valid 11x11 Gaussian windows, averaged over
    channels; its mean equals skimage's structural_similarity (Gaussian weights, population
    covariance), and it stays finite and differentiable for bf16 inputs."""

    def test_random_pair_matches_skimage(self) -> None:
        x, y = _pair(2, 3, 40, 33)
        ours = ssim(x, y)
        assert ours.shape == (2,) and ours.dtype == torch.float32
        for i in range(2):
            ref = skimage_metrics.structural_similarity(
                x[i].double().numpy(), y[i].double().numpy(), gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False, data_range=2.0, channel_axis=0,
            )
            assert ours[i].item() == pytest.approx(ref, abs=1e-4)

    def test_valid_window_gives_cropped_map_shape(self) -> None:
        x, y = _pair(2, 3, 40, 33)
        assert ssim_map(x, y).shape == (2, 40 - 10, 33 - 10)
        assert ssim_map(x, y, window_size=7).shape == (2, 40 - 6, 33 - 6)

    def test_identical_images_give_one(self) -> None:
        x, _ = _pair(2, 3, 24, 24)
        torch.testing.assert_close(ssim(x, x), torch.ones(2), atol=1e-5, rtol=0)

    def test_bf16_inputs_give_float32_and_finite_grads(self) -> None:
        x, y = _pair(2, 3, 24, 24)
        x_bf16 = x.bfloat16().requires_grad_()
        value = ssim(x_bf16, y.bfloat16())
        assert value.dtype == torch.float32
        # bf16 only rounds the inputs; the statistics themselves are float32.
        torch.testing.assert_close(value, ssim(x.bfloat16().float(), y.bfloat16().float()))
        (1 - value).sum().backward()
        assert x_bf16.grad is not None and torch.isfinite(x_bf16.grad.float()).all()
        assert x_bf16.grad.abs().sum() > 0

    def test_mismatched_or_small_inputs_raise_shape_error(self) -> None:
        x, y = _pair(1, 3, 24, 24)
        with pytest.raises(ShapeError, match=r"\(1, 3, 24, 24\).*\(1, 3, 24, 20\)"):
            ssim_map(x, y[..., :20])
        with pytest.raises(ShapeError, match=">= 11"):
            ssim_map(x[..., :10], y[..., :10])
        with pytest.raises(ValueError, match="odd"):
            ssim_map(x, y, window_size=10)


class TestMSSSIM:
    """ms_ssim follows pytorch_msssim (2x average pooling, relu'd contrast-structure terms at the
    first four scales, full SSIM at the last, per-channel product then channel mean); images must
    be at least (window_size - 1) * 16 + 1 = 161 pixels for the default five scales."""

    def test_random_pair_matches_pytorch_msssim(self) -> None:
        x, y = _pair(2, 3, 170, 161)  # odd width exercises the padded pooling
        ours = ms_ssim(x, y)
        ref = pytorch_msssim.ms_ssim(x, y, data_range=2.0, size_average=False)
        assert ours.shape == (2,)
        torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=0)

    def test_identical_images_give_one(self) -> None:
        x, _ = _pair(1, 3, 161, 161)
        torch.testing.assert_close(ms_ssim(x, x), torch.ones(1), atol=1e-5, rtol=0)

    def test_anticorrelated_images_give_zero_with_finite_grads(self) -> None:
        # Negative contrast-structure is relu'd to 0, where 0 ** w has an infinite slope.
        x, _ = _pair(1, 3, 161, 161)
        x = x.requires_grad_()
        value = ms_ssim(x, -x.detach())
        assert value.item() == 0.0
        value.sum().backward()
        assert torch.isfinite(x.grad).all()

    def test_noisy_pair_gives_finite_nonzero_grads_for_bf16(self) -> None:
        x, y = _pair(1, 3, 161, 161, noise=0.1)
        x_bf16 = x.bfloat16().requires_grad_()
        value = ms_ssim(x_bf16, y.bfloat16())
        assert value.dtype == torch.float32 and 0 < value.item() < 1
        (1 - value).sum().backward()
        assert torch.isfinite(x_bf16.grad.float()).all() and x_bf16.grad.abs().sum() > 0

    def test_too_small_image_names_minimum_size(self) -> None:
        x, y = _pair(1, 3, 160, 200)
        with pytest.raises(ShapeError, match=">= 161"):
            ms_ssim(x, y)
        # Fewer scales need fewer halvings: 3 scales with an 11-window need 41 pixels.
        x, y = _pair(1, 3, 41, 41)
        assert ms_ssim(x, y, weights=(0.3, 0.3, 0.4)).shape == (1,)
        with pytest.raises(ShapeError, match=">= 41"):
            ms_ssim(x[..., :40], y[..., :40], weights=(0.3, 0.3, 0.4))
