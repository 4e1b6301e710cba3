"""Specification of chopgrad_core.lpips, with random weights (nothing is ever downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from chopgrad_core.errors import ShapeError, WeightsNotFoundError
from chopgrad_core.lpips import LPIPS, main


def _random_lpips(net: str = "alex", seed: int = 0) -> LPIPS:
    torch.manual_seed(seed)
    model = LPIPS(net)
    # Trained LPIPS linear weights are non-negative (the official training clamps them), which is
    # what makes the distance grow with the feature difference; mimic that.
    for i in range(5):
        getattr(model, f"lin{i}").model[1].weight.abs_()
    return model


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-0.8, 0.8, size).expand(n, 3, size, size)
    return (ramp + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    return _random_lpips("alex")


class TestLPIPSForward:
    """LPIPS is 0 for identical images, grows with the perturbation, is frozen yet differentiable
    w.r.t. its inputs, and its spatial map averages to the scalar (exactly when the tap sizes
    divide the image, as for vgg at multiples of 16)."""

    def test_identical_images_give_zero(self, alex: LPIPS) -> None:
        x = _images()
        d = alex(x, x)
        assert d.shape == (2,) and d.dtype == torch.float32
        assert d.abs().max().item() < 1e-6

    def test_larger_noise_gives_larger_distance(self, alex: LPIPS) -> None:
        x = _images(n=1)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        d = [alex(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.02, 0.1, 0.4)]
        assert 0 < d[0] < d[1] < d[2]

    def test_frozen_parameters_still_pass_grad_to_bf16_input(self, alex: LPIPS) -> None:
        alex.train()  # a parent's .train() must not switch the dropout in the linear heads on
        assert not alex.training and not any(p.requires_grad for p in alex.parameters())
        x = _images().bfloat16().requires_grad_()
        y = _images(seed=1).bfloat16()
        d = alex(x, y)
        assert d.dtype == torch.float32
        d.sum().backward()
        assert torch.isfinite(x.grad.float()).all() and x.grad.abs().sum() > 0
        assert all(p.grad is None for p in alex.parameters())

    def test_spatial_map_mean_approximates_scalar_for_alex(self, alex: LPIPS) -> None:
        x, y = _images(), _images(seed=1)
        d_map = alex(x, y, spatial=True)
        assert d_map.shape == (2, 1, 64, 64)
        # alex taps are 15, 7, 3, 3, 3 pixels for 64: bilinear resampling at a non-integer factor
        # moves the mean slightly.
        torch.testing.assert_close(d_map.mean(dim=(1, 2, 3)), alex(x, y), rtol=0.05, atol=0)

    def test_spatial_map_mean_equals_scalar_for_vgg_at_multiple_of_16(self) -> None:
        vgg = _random_lpips("vgg")
        x, y = _images(n=1, size=32), _images(n=1, size=32, seed=1)
        # Integer-factor bilinear upsampling (align_corners=False) preserves the mean exactly.
        torch.testing.assert_close(vgg(x, y, spatial=True).mean(dim=(1, 2, 3)), vgg(x, y))

    def test_bad_shapes_raise_shape_error(self, alex: LPIPS) -> None:
        x = _images()
        with pytest.raises(ShapeError, match=r"\(2, 3, 64, 64\).*\(2, 3, 64, 60\)"):
            alex(x, x[..., :60])
        with pytest.raises(ShapeError, match=">= 31"):
            alex(x[..., :30, :30], x[..., :30, :30])


class TestLPIPSWeights:
    """Weights come only from local files: one .safetensors/.pth with torchvision `features.*` and
    official `lin{i}.model.1.weight` keys, built by the converter; a missing file names the config
    key chopgrad.lpips_weights, and a wrong key set lists the offending keys."""

    def test_saved_safetensors_round_trip_gives_identical_outputs(
        self, alex: LPIPS, tmp_path: Path
    ) -> None:
        path = tmp_path / "lpips_alex.safetensors"
        safetensors.torch.save_file(alex.state_dict(), path)
        loaded = LPIPS.from_local(path, net="alex")
        x, y = _images(), _images(seed=1)
        torch.testing.assert_close(loaded(x, y), alex(x, y), atol=0, rtol=0)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())

    def test_missing_file_raises_weights_not_found_naming_config_key(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.safetensors"
        with pytest.raises(WeightsNotFoundError, match="chopgrad.lpips_weights") as info:
            LPIPS.from_local(path, net="vgg")
        assert str(path) in str(info.value) and "convert" in str(info.value)
        assert isinstance(info.value, FileNotFoundError)

    def test_wrong_keys_raise_value_error_listing_them(self, alex: LPIPS, tmp_path: Path) -> None:
        state = {k: v for k, v in alex.state_dict().items() if not k.startswith("lin4.")}
        state["lins.9.bogus"] = torch.zeros(1)
        path = tmp_path / "broken.pth"
        torch.save(state, path)
        expected = r"missing keys \[lin4\.model\.1\.weight\].*unexpected keys \[lins\.9\.bogus\]"
        with pytest.raises(ValueError, match=expected):
            LPIPS.from_local(path, net="alex")
        # An alex file read as vgg fails the same way rather than loading half the weights.
        with pytest.raises(ValueError, match="missing keys"):
            LPIPS.from_local(path, net="vgg")

    def test_converter_merges_torchvision_and_lpips_files(
        self, alex: LPIPS, tmp_path: Path
    ) -> None:
        state = alex.state_dict()
        # torchvision's alexnet checkpoint also holds the classifier, which LPIPS drops.
        torchvision_sd = {k: v for k, v in state.items() if k.startswith("features.")}
        torchvision_sd["classifier.1.weight"] = torch.zeros(4, 4)
        lpips_sd = {k: v for k, v in state.items() if k.startswith("lin")}
        torch.save(torchvision_sd, tmp_path / "alexnet-owt.pth")
        torch.save(lpips_sd, tmp_path / "alex.pth")
        out = tmp_path / "lpips_alex.safetensors"
        assert main([
            "convert", "--net", "alex", "--backbone", str(tmp_path / "alexnet-owt.pth"),
            "--lin", str(tmp_path / "alex.pth"), "--out", str(out),
        ]) == 0
        assert sorted(safetensors.torch.load_file(out)) == sorted(state)
        # written atomically (chopgrad_core.atomic): no temporary file left beside it
        assert sorted(p.name for p in tmp_path.iterdir()) == ["alex.pth", "alexnet-owt.pth", "lpips_alex.safetensors"]
        x, y = _images(), _images(seed=1)
        loaded = LPIPS.from_local(out, net="alex")
        torch.testing.assert_close(loaded(x, y), alex(x, y), atol=0, rtol=0)
