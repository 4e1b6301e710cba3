"""Issue 15's levers change memory, never the gradient: fp32 equality with plain truncation on tiny VAEs."""

from __future__ import annotations

import pytest
import torch

import chopgrad_core as cg
from chopgrad_core.config import ChopGradConfig
from chopgrad_core.errors import ChopGradError
from chopgrad_core.memory import RecomputePlan, plan_recompute
from chopgrad_core.tiny import tiny_cogvideox, tiny_wan21

RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(vae, z, target, params=(), **kw):
    zz = z.clone().requires_grad_()
    for p in params:
        p.grad = None
    loss = cg.pixel_loss(cg.wrap(vae), zz, target, **kw)
    loss.backward()
    return loss.detach(), torch.cat([zz.grad.flatten(), *(p.grad.flatten() for p in params)])


@pytest.fixture(scope="module")
def wan():
    vae = tiny_wan21().requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 16, 3, 4, 6, generator=g)  # one camera: micro_batch is tested in test_engine
    target = torch.rand(cg.wrap(vae).frames_shape(z), generator=g) * 2 - 1
    return vae, z, target


# Every offloaded tensor goes through host memory (min_bytes=0), strips split every block level.
PLANS = {
    "strips+keep_low_levels": RecomputePlan(strips=3, keep_below=2),
    "all": RecomputePlan(strips=4, offload_checkpoints=True, keep_below=1, offload_min_bytes=0),
}


class TestWanLevers:
    """Strips in forward and backward, block inputs in host memory fetched a piece ahead, kept
    low-resolution blocks and snapshots offloaded for sliding D >= 1: the latent and decoder-parameter
    gradients equal plain truncation's (no levers) for D = 0, D = 1 and block k = 2."""

    @pytest.mark.parametrize("plan,mode,window", [("all", "sliding", 0), ("all", "sliding", 1), ("all", "block", 2),
                                                  ("strips+keep_low_levels", "sliding", 1)])
    def test_planned_levers_equal_plain_truncation(self, wan, plan, mode, window, monkeypatch):
        vae, z, target = wan
        stores, fetches = [], []
        store, fetch = cg.decoder.CacheOffloader.store, cg.decoder.CacheOffloader.fetch
        monkeypatch.setattr(cg.decoder.CacheOffloader, "store",
                            lambda self, k, t, ring=None: stores.append(k) or store(self, k, t, ring))
        monkeypatch.setattr(cg.decoder.CacheOffloader, "fetch",
                            lambda self, items: fetches.extend(k for k, _ in items) or fetch(self, items))
        params = [p for p in cg.wrap(vae).parameters()][-4:]  # the head's: reached by every group
        for p in params:
            p.requires_grad_(True)
        try:
            loss0, plain = run(vae, z, target, params, mode=mode, window=window)
            loss1, levered = run(vae, z, target, params, mode=mode, window=window, recompute=True,
                                 offload_cache=True, micro_batch=1, recompute_plan=PLANS[plan])
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        assert any(isinstance(k, tuple) and k[0] == "ckpt" for k in stores) == PLANS[plan].offload_checkpoints
        assert any(isinstance(k, int) for k in stores), "the cache was not offloaded"
        # Every window after the first two starts from a snapshot in host memory (any buffer of
        # its ring) and must fetch it: on the CPU a missed fetch would still compute correctly.
        assert any(isinstance(k, int) for k in fetches), "no snapshot came back from host memory"
        assert abs(float(loss1) - float(loss0)) <= RTOL * abs(float(loss0))
        assert rel_err(levered, plain) < RTOL

    def test_memory_budget_plans_and_stays_exact(self, wan):
        vae, z, target = wan
        _, plain = run(vae, z, target, mode="sliding", window=0)
        _, budget = run(vae, z, target, mode="sliding", window=0, recompute=True, offload_cache=True,
                        micro_batch=1, memory_budget_gib=1e-4)  # tiny budget: every lever on
        assert rel_err(budget, plain) < RTOL


class TestCogVideoXLevers:
    """Each resnet, upsampler and the head recomputed once with explicit caches, checkpoint inputs
    and snapshots in host memory: gradients (latents and head parameters) equal plain truncation's."""

    @pytest.mark.parametrize("mode,window", [("sliding", 0), ("sliding", 1)])
    def test_levers_equal_plain_truncation(self, mode, window):
        vae = tiny_cogvideox().requires_grad_(False)
        g = torch.Generator().manual_seed(1)
        z = torch.randn(1, 4, 5, 4, 4, generator=g)
        target = torch.rand(cg.wrap(vae).frames_shape(z), generator=g) * 2 - 1
        params = cg.wrap(vae).parameters()[-6:]
        for p in params:
            p.requires_grad_(True)
        try:
            loss0, plain = run(vae, z, target, params, mode=mode, window=window)
            plan = RecomputePlan(offload_checkpoints=True, offload_min_bytes=0)
            loss1, levered = run(vae, z, target, params, mode=mode, window=window, recompute=True,
                                 offload_cache=True, micro_batch=1, recompute_plan=plan)
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        assert abs(float(loss1) - float(loss0)) <= RTOL * abs(float(loss0))
        assert rel_err(levered, plain) < RTOL


@pytest.fixture(scope="module")
def cog():
    vae = tiny_cogvideox().requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, 5, 2, 4, generator=g)  # groups of 3 and 2 latent frames (odd and even paths)
    target = torch.rand(cg.wrap(vae).frames_shape(z), generator=g) * 2 - 1
    return vae, z, target


class TestCogVideoXStrips:
    """Blocks run and recomputed in horizontal strips through CogVideoX's group norms: statistics
    over the whole frame group first, then the strips; backward through the statistics in a second
    pass. Latent and head-parameter gradients equal plain truncation's for D = 0, D = 1 and block
    k = 2, with checkpoint inputs and snapshots in host memory, and with a planned budget."""

    @pytest.mark.parametrize("mode,window,kw", [
        ("sliding", 0, dict(recompute_plan=RecomputePlan(strips=4, offload_checkpoints=True, offload_min_bytes=0))),
        ("sliding", 1, dict(recompute_plan=RecomputePlan(strips=3))),
        ("block", 2, dict(memory_budget_gib=1e-4)),  # tiny budget: the planner's thinnest strips
    ])
    def test_strips_equal_plain_truncation(self, cog, mode, window, kw, monkeypatch):
        from chopgrad_core.adapters import cogvideox

        vae, z, target = cog
        striped = []
        forward = cogvideox._StripBlock.forward
        monkeypatch.setattr(cogvideox._StripBlock, "forward", staticmethod(
            lambda ctx, run, n, *a: striped.append((type(run[0]).__name__, n)) or forward(ctx, run, n, *a)))
        params = cg.wrap(vae).parameters()[-6:]  # norm_out and conv_out: reached by every group
        for p in params:
            p.requires_grad_(True)
        try:
            loss0, plain = run(vae, z, target, params, mode=mode, window=window)
            loss1, levered = run(vae, z, target, params, mode=mode, window=window, recompute=True,
                                 offload_cache=True, micro_batch=1, **kw)
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        # Resnets (two norms), upsamplers and the head all ran in strips.
        assert {name for name, n in striped if n > 1} == {"_ResnetRun", "_UpsampleRun", "_HeadRun"}
        assert abs(float(loss1) - float(loss0)) <= RTOL * abs(float(loss0))
        assert rel_err(levered, plain) < RTOL


class TestPlanner:
    """Strip counts grow with the frame size and shrink with the budget; a budget the device-held
    plan cannot meet turns on checkpoint offload; without a budget the fixed issue-2 plan holds."""

    def plan(self, h, w, budget):
        return plan_recompute(height=h, width=w, channels=96, frames=4, element_size=2, budget_gib=budget)

    def test_strips_grow_with_resolution_and_shrink_with_budget(self):
        small, large = self.plan(480, 832, 8), self.plan(896, 1600, 8)
        assert large.strips > small.strips
        assert large.offload_checkpoints
        assert self.plan(896, 1600, 16).strips <= large.strips

    def test_no_budget_is_the_fixed_plan(self):
        assert plan_recompute(height=896, width=1600, channels=96, frames=4, element_size=2,
                              budget_gib=None) == RecomputePlan(strips=4)

    def test_bad_budget_names_the_key(self):
        with pytest.raises(ChopGradError, match="memory_budget_gib"):
            ChopGradConfig(memory_budget_gib=0)
