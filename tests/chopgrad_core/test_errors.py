"""Bad input to chopgrad_core gets a clear error naming the expected shape or value."""

from __future__ import annotations

import pytest
import torch

import chopgrad_core as cg
from chopgrad_core.config import PRESETS, ChopGradConfig
from chopgrad_core.errors import ChopGradError, NonFiniteError, ShapeError, UnsupportedVAEError
from chopgrad_core.tiny import tiny_wan21


@pytest.fixture(scope="module")
def vae():
    return tiny_wan21().requires_grad_(False)


@pytest.fixture()
def inputs():
    z = torch.randn(1, 16, 3, 2, 2)
    return z, torch.zeros(1, 3, 9, 16, 16)


class TestBadInput:
    """Each bad argument raises a ValueError subclass whose message says what was expected."""

    def test_four_dimensional_latents_name_the_expected_shape(self, vae, inputs):
        _, target = inputs
        with pytest.raises(ShapeError, match=r"5-D tensor \(B, C=16, T, h, w\).*\(1, 16, 2, 2\)"):
            cg.pixel_loss(vae, torch.randn(1, 16, 2, 2), target)

    def test_wrong_channel_count_names_the_expected_channels(self, vae, inputs):
        _, target = inputs
        with pytest.raises(ShapeError, match=r"has 4 channels.*C=16"):
            cg.pixel_loss(vae, torch.randn(1, 4, 3, 2, 2), target)

    def test_target_frame_count_names_the_decoded_frame_count(self, vae, inputs):
        z, _ = inputs
        with pytest.raises(ShapeError, match=r"3 latent frames decode to 9 frames"):
            cg.pixel_loss(vae, z, torch.zeros(1, 3, 12, 16, 16))

    def test_negative_window_is_rejected(self, vae, inputs):
        with pytest.raises(ChopGradError, match=r"window must be an integer >= 0.*-1"):
            cg.pixel_loss(vae, *inputs, window=-1)

    def test_block_window_zero_is_rejected(self, vae, inputs):
        with pytest.raises(ChopGradError, match=r"block.*window >= 1"):
            cg.pixel_loss(vae, *inputs, mode="block", window=0)

    def test_unknown_mode_lists_the_modes(self, vae, inputs):
        with pytest.raises(ChopGradError, match=r"unknown mode 'bptt'.*full, block, sliding"):
            cg.pixel_loss(vae, *inputs, mode="bptt")

    def test_unknown_loss_lists_the_losses(self, vae, inputs):
        with pytest.raises(ChopGradError, match=r"unknown loss 'huber'.*l1, mse, ssim, ms_ssim, lpips"):
            cg.pixel_loss(vae, *inputs, loss="huber")

    def test_lpips_without_weights_names_the_config_key(self, vae, inputs):
        with pytest.raises(ChopGradError, match=r"chopgrad\.lpips_weights"):
            cg.pixel_loss(vae, *inputs, loss="lpips")

    def test_missing_lpips_file_names_the_config_key(self, vae, inputs, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"chopgrad\.lpips_weights"):
            cg.pixel_loss(vae, *inputs, loss="lpips", lpips_weights=tmp_path / "missing.safetensors")

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_non_finite_latents_are_rejected(self, vae, inputs, bad):
        z, target = inputs
        z[0, 0, 0, 0, 0] = bad
        with pytest.raises(NonFiniteError, match="latents contains NaN or inf"):
            cg.pixel_loss(vae, z, target)
        with pytest.raises(NonFiniteError):
            cg.decode(vae, z)

    def test_mask_of_wrong_size_names_the_expected_shape(self, vae, inputs):
        with pytest.raises(ShapeError, match=r"mask must have shape \(B\|1, 1\|3, 9, 16, 16\)"):
            cg.pixel_loss(vae, *inputs, mask=torch.ones(1, 1, 9, 8, 8))

    def test_weight_of_wrong_length_names_the_frame_count(self, vae, inputs):
        with pytest.raises(ShapeError, match=r"weight must be per frame: shape \(9,\)"):
            cg.pixel_loss(vae, *inputs, weight=torch.ones(4))

    def test_ms_ssim_rejects_a_pixel_mask(self, vae, inputs):
        with pytest.raises(ChopGradError, match=r"ms_ssim.*takes no mask"):
            cg.pixel_loss(vae, *inputs, loss="ms_ssim", mask=torch.ones(1, 1, 9, 16, 16))

    def test_unsupported_vae_lists_supported_ones(self):
        with pytest.raises(UnsupportedVAEError, match=r"AutoencoderKLCogVideoX, AutoencoderKLWan"):
            cg.wrap(torch.nn.Conv2d(3, 3, 1))
        assert issubclass(UnsupportedVAEError, TypeError)


class TestConfig:
    """ChopGradConfig validates its fields and names the config key to change."""

    def test_defaults_map_onto_pixel_loss(self, vae, inputs):
        kw = ChopGradConfig().pixel_loss_kwargs()
        assert float(cg.pixel_loss(vae, *inputs, **kw)) >= 0

    def test_bad_mode_names_the_key(self):
        with pytest.raises(ChopGradError, match=r"chopgrad\.mode='x'"):
            ChopGradConfig(mode="x")

    def test_lpips_without_weights_names_the_key(self):
        with pytest.raises(ChopGradError, match=r"chopgrad\.lpips_weights"):
            ChopGradConfig(loss="lpips")

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_yaml_mirrors_the_dataclass(self, preset):
        from dataclasses import fields
        from pathlib import Path

        import yaml

        path = Path(__file__).parents[2] / "configs" / "chopgrad" / f"{preset}.yaml"
        keys = set(yaml.safe_load(path.read_text()))
        assert keys == {f.name for f in fields(ChopGradConfig)}
        assert ChopGradConfig(**yaml.safe_load(path.read_text())) == PRESETS[preset]

    def test_default_preset_is_the_dataclass_default(self):
        assert PRESETS["default"] == ChopGradConfig()
