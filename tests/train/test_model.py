"""The controlled Wan model: cameras share one attention, controls reach the output, and the
ChopGrad pixel loss on the x0 estimate trains the transformer."""

from __future__ import annotations


import pytest
import torch
from diffusers import WanVACETransformer3DModel

import chopgrad_core as cg
from chopgrad_core.tiny import tiny_wan21
from drivegen.model.controlled_wan import ControlledWan, ModelConfig, pool_layout, tile_cameras, untile_cameras
from drivegen.model.objective import LatentSpace, ObjectiveConfig, losses

B, K, C, T, h, w, S = 1, 2, 16, 2, 4, 6, 3


def make_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(-1, 10, (B, K, T, S), generator=g)
    cond = dict(box_corners=torch.rand(B, K, T, S, 8, 2, generator=g), box_params=torch.randn(B, K, T, S, 10, generator=g),
                box_class=cls, box_mask=cls >= 0, intrinsics=torch.eye(3).expand(B, K, 3, 3) * 20,
                cam_to_ego=torch.eye(4).expand(B, K, 4, 4))
    return torch.randn(B, K, C, T, h, w, generator=g), torch.randn(B, K, 35, T, h, w, generator=g), cond


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return ControlledWan(ModelConfig())


class TestControlledWan:
    """Joint attention over views by tiling cameras along width; every condition changes the output."""

    def test_tiling_cameras_round_trips(self):
        x = torch.randn(2, 3, 4, 5, 6, 8)
        assert tile_cameras(x).shape == (2, 4, 5, 6, 24)
        assert torch.equal(untile_cameras(tile_cameras(x), 3), x)

    def test_output_is_a_velocity_per_camera(self, model):
        z, ctrl, cond = make_batch()
        assert model(z, torch.tensor([500.0]), ctrl, cond, (32, 48)).shape == z.shape

    @pytest.mark.parametrize("what", ["control", "boxes", "camera_view_of_other_camera"])
    def test_each_condition_changes_the_output(self, model, what):
        z, ctrl, cond = make_batch()
        # Zero-initialised VACE projections would hide the control branch: give them weights.
        for p in model.transformer.vace_blocks.parameters():
            torch.nn.init.normal_(p, std=0.05)
        base = model(z, torch.tensor([500.0]), ctrl, cond, (32, 48))
        if what == "control":
            out = model(z, torch.tensor([500.0]), ctrl + 1.0, cond, (32, 48))
            changed = out
        elif what == "boxes":
            cond2 = dict(cond, box_params=cond["box_params"] + 1.0, box_mask=torch.ones_like(cond["box_mask"]))
            changed = model(z, torch.tensor([500.0]), ctrl, cond2, (32, 48))
        else:  # editing camera 1's latents changes camera 0's output: the views attend to each other
            z2 = z.clone()
            z2[:, 1] += 1.0
            changed = model(z2, torch.tensor([500.0]), ctrl, cond, (32, 48))[:, :1]
            base = base[:, :1]
        assert (changed - base).abs().max() > 1e-4

    def test_layout_pools_onto_the_latent_grid(self):
        layout = torch.zeros(1, 1, 5, 2, 32, 48)
        layout[:, :, 1:5, 0, :8, :8] = 1.0  # frames 1..4 = latent frame 1, top-left latent pixel
        pooled = pool_layout(layout, 2, (4, 6))
        assert pooled.shape == (1, 1, 2, 2, 4, 6)
        assert pooled[0, 0, 0, 1, 0, 0] == 1.0 and pooled[0, 0, 0, 0].sum() == 0 and pooled[0, 0, 0, 1].sum() == 1.0

    def test_local_pretrained_transformer_loads_unchanged(self, model, tmp_path):
        model.transformer.save_pretrained(tmp_path / "transformer")
        loaded = ControlledWan(model.config, WanVACETransformer3DModel.from_pretrained(tmp_path / "transformer"))
        # Only the condition embeddings are copied: the transformer comes from the directory.
        loaded.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("transformer.")},
                               strict=False)
        z, ctrl, cond = make_batch()
        assert torch.allclose(loaded(z, torch.tensor([10.0]), ctrl, cond, (32, 48)),
                              model(z, torch.tensor([10.0]), ctrl, cond, (32, 48)), atol=1e-6)


class TestObjective:
    """Flow matching plus the ChopGrad pixel loss: both reach the transformer, and training lowers them."""

    def test_pixel_loss_alone_trains_the_transformer(self, model):
        vae = tiny_wan21().requires_grad_(False)
        z, ctrl, cond = make_batch()
        frames = (torch.rand(B, K, 3, 5, 32, 48) * 2 - 1)
        cfg = ObjectiveConfig(sigma=0.5, flow_weight=0.0, pixel_weight=1.0)
        out = losses(model, cg.wrap(vae), LatentSpace(vae), z, frames, ctrl, cond, cfg,
                     generator=torch.Generator().manual_seed(0))
        out["total"].backward()
        grads = [p.grad.abs().sum() for p in model.transformer.proj_out.parameters()]
        assert sum(grads) > 0

    def test_flow_loss_falls_on_a_fixed_batch(self, model):
        vae = tiny_wan21().requires_grad_(False)
        z, ctrl, cond = make_batch()
        frames = (torch.rand(B, K, 3, 5, 32, 48) * 2 - 1)
        cfg = ObjectiveConfig(sigma=0.5, pixel_weight=0.1)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        history = []
        for step in range(25):
            out = losses(model, cg.wrap(vae), LatentSpace(vae), z, frames, ctrl, cond, cfg,
                         generator=torch.Generator().manual_seed(step % 2))
            opt.zero_grad()
            out["total"].backward()
            opt.step()
            history.append(float(out["flow"]))
        assert sum(history[-5:]) / 5 < 0.8 * sum(history[:5]) / 5


class TestControlInput:
    """model.control_input: the control also enters the main stream through a second patch
    embedding; wrapping pretrained weights it starts at zero, so the model equals the pretrained
    one until trained; LoRA keeps it trainable."""

    def test_control_input_changes_the_output_and_keeps_shapes(self):
        torch.manual_seed(0)
        m = ControlledWan(ModelConfig(control_input=True))
        x, control, cond = make_batch()
        t = torch.tensor([500])
        out = m(x, t, control, cond, (32, 48))
        assert out.shape == x.shape
        assert not torch.allclose(out, m(x, t, control + 1.0, cond, (32, 48)))

    def test_zero_initialised_on_pretrained_weights(self):
        torch.manual_seed(0)
        base = ControlledWan(ModelConfig())
        pretrained = WanVACETransformer3DModel.from_config(base.transformer.config)
        pretrained.load_state_dict(base.transformer.state_dict())
        wrapped = ControlledWan(ModelConfig(control_input=True), pretrained)
        wrapped.boxes.load_state_dict(base.boxes.state_dict())
        wrapped.cameras.load_state_dict(base.cameras.state_dict())
        wrapped.null_text.data.copy_(base.null_text.data)
        x, control, cond = make_batch()
        t = torch.tensor([500])
        assert torch.allclose(wrapped(x, t, control, cond, (32, 48)), base(x, t, control, cond, (32, 48)), atol=1e-6)

    def test_lora_keeps_the_control_embedding_trainable(self):
        from drivegen.model.controlled_wan import apply_lora

        m = ControlledWan(ModelConfig(control_input=True))
        trainable = apply_lora(m, 2)
        assert any(n.startswith("transformer.patch_embedding.control.") for n in trainable)
        assert not any(n.startswith("transformer.patch_embedding.base.") for n in trainable)


class TestControlSkip:
    """model.control_skip: the clean-latent estimate x_t - sigma * v is the control video's latents
    plus the transformer's output, at every noise level; the velocity matches flow matching's."""

    @pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0])
    def test_x0_estimate_is_the_control_latents_when_the_output_is_zero(self, sigma):
        torch.manual_seed(0)
        m = ControlledWan(ModelConfig(control_input=True, control_skip=True))
        torch.nn.init.zeros_(m.transformer.proj_out.weight)
        torch.nn.init.zeros_(m.transformer.proj_out.bias)
        x_t, control, cond = make_batch()
        v = m(x_t, torch.tensor([1000.0 * sigma]), control, cond, (32, 48))
        assert torch.allclose(x_t - sigma * v, control[:, :, :C], atol=1e-5)

    def test_residual_shifts_the_estimate_by_the_output(self):
        torch.manual_seed(0)
        plain = ControlledWan(ModelConfig(control_input=True))
        torch.manual_seed(0)
        skip = ControlledWan(ModelConfig(control_input=True, control_skip=True))
        x_t, control, cond = make_batch()
        sigma = 0.4
        t = torch.tensor([1000.0 * sigma])
        out = plain(x_t, t, control, cond, (32, 48))  # same weights: the raw transformer output
        v = skip(x_t, t, control, cond, (32, 48))
        assert torch.allclose(x_t - sigma * v, control[:, :, :C] + out, atol=1e-5)
