"""Conformance suite for chopgrad_core: every adapter subclasses it with a tiny VAE of its family."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chopgrad_core as cg
from chopgrad_core.tiny import tiny_cogvideox, tiny_wan21, tiny_wan22

RTOL = 1e-5  # fp32 relative error the exactness claims are held to


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class CausalDecoderConformance:
    """Truncated pixel losses on a VAE family: the forward is never truncated, the gradient is
    exactly the full gradient when the window covers the video, and the memory levers change
    nothing but memory (tiling: nothing but the gradient's locality)."""

    make_vae = None
    latent_thw: tuple[int, int, int] = (4, 4, 6)
    batch = 2

    @pytest.fixture(scope="class")
    @classmethod
    def vae(cls):
        vae = cls.make_vae()
        for p in vae.parameters():
            p.requires_grad_(False)
        return vae

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls, vae):
        g = torch.Generator().manual_seed(1)
        t, h, w = cls.latent_thw
        dec = cg.wrap(vae)
        z = torch.randn(cls.batch, dec.latent_channels, t, h, w, generator=g)
        target = torch.rand(dec.frames_shape(z), generator=g) * 2 - 1
        return z, target

    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls, vae, data, memoise):
        """``run(vae, z, target, **kw)`` once per class and settings: the plain truncated references
        (full, block k, sliding D) that several tests compare their levers against."""
        return memoise(lambda **kw: cls.run(cls, vae, *data, **kw))

    @pytest.fixture(scope="class")
    @classmethod
    def decode_l1(cls, vae, data):
        """The L1 loss of the normal (untruncated, no-grad) decode against the target."""
        z, target = data
        return float(F.l1_loss(cg.decode(vae, z), target))

    def full_reference(self, vae, z, target, loss_fn=F.l1_loss):
        zr = z.clone().requires_grad_()
        loss = loss_fn(vae.decode(zr).sample, target)
        loss.backward()
        return loss.detach(), zr.grad

    def run(self, vae, z, target, **kw):
        zz = z.clone().requires_grad_()
        loss = cg.pixel_loss(cg.wrap(vae), zz, target, **kw)
        loss.backward()
        return loss.detach(), zz.grad

    def num_groups(self, vae):
        return len(cg.wrap(vae).groups(self.latent_thw[0]))

    # -- decode ------------------------------------------------------------------------------

    def test_decode_equals_vae_decode(self, vae, data):
        z, _ = data
        ref = vae.decode(z).sample
        out = cg.decode(vae, z)
        assert out.shape == ref.shape
        assert rel_err(out, ref) < RTOL
        assert not out.requires_grad

    def test_streaming_decode_yields_groups_in_order(self, vae, data):
        z, _ = data
        dec = cg.wrap(vae)
        parts = list(cg.decode(dec, z, stream=True))
        assert [p.shape[2] for p in parts] == [g.pixel.stop - g.pixel.start for g in dec.groups(z.shape[2])]
        assert torch.equal(torch.cat(parts, dim=2), cg.decode(dec, z))
        assert torch.is_grad_enabled()  # the generator must not leak no_grad into the caller

    # -- exactness ---------------------------------------------------------------------------

    def test_full_equals_autograd_through_vae_decode(self, vae, data, shared):
        z, target = data
        ref_loss, ref_grad = self.full_reference(vae, z, target)
        loss, grad = shared(mode="full")
        assert rel_err(loss, ref_loss) < RTOL and rel_err(grad, ref_grad) < RTOL

    @pytest.mark.parametrize("mode", ["block", "sliding"])
    def test_window_covering_video_equals_full(self, vae, data, shared, mode):
        z, target = data
        g = self.num_groups(vae)
        _, ref_grad = shared(mode="full")
        window = g if mode == "block" else g - 1
        _, grad = self.run(vae, z, target, mode=mode, window=window)
        assert rel_err(grad, ref_grad) < RTOL

    def test_block_one_equals_sliding_zero(self, shared):
        _, block = shared(mode="block", window=1)
        _, sliding = shared(mode="sliding", window=0)
        assert rel_err(block, sliding) < RTOL

    @pytest.mark.parametrize("kw", [
        dict(mode="full"), dict(mode="block", window=1), dict(mode="block", window=2),
        dict(mode="sliding", window=0), dict(mode="sliding", window=1), dict(mode="sliding", window=1, micro_batch=1),
        dict(mode="sliding", window=1, recompute=True), dict(mode="sliding", window=0, tile=(2, 2), tile_halo=1),
    ], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
    def test_forward_value_equals_normal_decode_loss(self, shared, decode_l1, kw):
        loss, _ = shared(**kw)
        assert abs(float(loss) - decode_l1) <= RTOL * abs(decode_l1)

    def test_decoder_parameters_receive_the_full_gradient(self, vae, data):
        z, target = data
        params = cg.wrap(vae).parameters()
        grads = {}
        for kw in (dict(mode="full"), dict(mode="sliding", window=self.num_groups(vae) - 1)):
            for p in params:
                p.requires_grad_(True)
                p.grad = None
            try:
                self.run(vae, z, target, **kw)
                grads[kw["mode"]] = torch.cat([p.grad.flatten() for p in params])
            finally:
                for p in params:
                    p.requires_grad_(False)
                    p.grad = None
        assert grads["full"].abs().sum() > 0
        assert rel_err(grads["sliding"], grads["full"]) < RTOL

    # -- memory levers: gradient equality with the plain truncated version -------------------

    @pytest.mark.parametrize("lever", [dict(micro_batch=1), dict(recompute=True),
                                       dict(recompute=True, recompute_strips=3)],
                             ids=["micro_batch", "recompute", "recompute_strips"])
    @pytest.mark.parametrize("mode,window", [("sliding", 1), ("block", 2)])
    def test_exact_lever_equals_plain_truncation(self, vae, data, shared, lever, mode, window):
        z, target = data
        _, plain = shared(mode=mode, window=window)
        _, levered = self.run(vae, z, target, mode=mode, window=window, **lever)
        assert rel_err(levered, plain) < RTOL

    @pytest.mark.parametrize("lever", [dict(offload_cache=True),
                                       dict(recompute=True, recompute_strips=3, offload_cache=True, micro_batch=1)],
                             ids=["offload", "recompute_strips_offload"])
    @pytest.mark.parametrize("mode,window", [("sliding", 0), ("block", 2)])
    def test_offloaded_cache_equals_plain_truncation(self, vae, data, shared, lever, mode, window, monkeypatch):
        # On the CPU the offloader copies to separate host buffers with the same bookkeeping as on
        # CUDA; count the stores so the test cannot pass with the lever silently off.
        stores = []
        store = cg.decoder.CacheOffloader.store
        monkeypatch.setattr(cg.decoder.CacheOffloader, "store", lambda self, k, t, ring=None: stores.append(k) or store(self, k, t, ring))
        z, target = data
        _, plain = shared(mode=mode, window=window)  # no offloading: stores nothing
        _, levered = self.run(vae, z, target, mode=mode, window=window, **lever)
        assert stores, "offload_cache=True stored nothing"
        assert rel_err(levered, plain) < RTOL

    def test_tiles_with_halo_covering_frame_equal_untiled(self, vae, data, shared):
        z, target = data
        _, h, w = self.latent_thw
        _, plain = shared(mode="sliding", window=1)
        _, tiled = self.run(vae, z, target, mode="sliding", window=1, tile=(1, 2), tile_halo=max(h, w))
        assert rel_err(tiled, plain) < RTOL

    def test_tiles_split_the_gradient_across_the_frame(self, vae, data, shared):
        z, target = data
        _, plain = shared(mode="sliding", window=0)
        _, tiled = self.run(vae, z, target, mode="sliding", window=0, tile=(2, 2), tile_halo=1)
        # Approximate but aligned: every latent pixel gets gradient, pointing the same way overall.
        assert (tiled.abs().sum(dim=(0, 1, 2)) > 0).all()
        assert F.cosine_similarity(tiled.flatten(), plain.flatten(), dim=0) > 0

    # -- composition with other losses --------------------------------------------------------

    def test_backward_scales_and_adds_like_any_loss(self, vae, data, shared):
        z, target = data
        _, grad = shared(mode="sliding", window=1)
        zz = z.clone().requires_grad_()
        producer = zz * 1.0  # stands for the transformer that produced the latents
        loss = 3.0 * cg.pixel_loss(vae, producer, target, mode="sliding", window=1) + producer.sum()
        loss.backward()
        assert rel_err(zz.grad, 3.0 * grad + 1.0) < RTOL

    # -- masks and weights ---------------------------------------------------------------------

    def test_mask_and_weight_match_masked_weighted_mean(self, vae, data):
        z, target = data
        b, c, f, h, w = target.shape
        g = torch.Generator().manual_seed(2)
        mask = (torch.rand(b, 1, f, h, w, generator=g) > 0.5).float()
        weight = torch.rand(f, generator=g)

        def reference(pred, tgt):
            err = (pred - tgt).abs() * mask * weight.view(1, 1, f, 1, 1)
            return err.sum() / (mask.expand_as(err) * weight.view(1, 1, f, 1, 1)).sum()

        ref_loss, ref_grad = self.full_reference(vae, z, target, reference)
        loss, grad = self.run(vae, z, target, mode="sliding", window=self.num_groups(vae) - 1, mask=mask, weight=weight)
        assert rel_err(loss, ref_loss) < RTOL and rel_err(grad, ref_grad) < RTOL


class TestWan21(CausalDecoderConformance):
    make_vae = staticmethod(tiny_wan21)
    latent_thw = (4, 4, 6)


class TestWan22(CausalDecoderConformance):
    make_vae = staticmethod(tiny_wan22)
    latent_thw = (3, 2, 4)


class TestCogVideoX(CausalDecoderConformance):
    make_vae = staticmethod(tiny_cogvideox)
    latent_thw = (5, 4, 4)
