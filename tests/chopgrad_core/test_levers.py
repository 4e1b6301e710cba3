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


def assert_levered_equals_plain(vae, z, target, params, reference, *, mode, window, **levers):
    """The loss and the gradients (latents and ``params``) with ``levers`` (recompute, cache offload,
    cameras one at a time, and what ``levers`` adds) equal plain truncation's, ``reference`` being
    ``plain_run`` or ``run``; ``params`` require grad only meanwhile."""
    for p in params:
        p.requires_grad_(True)
    try:
        loss0, plain = reference(vae, z, target, params, mode=mode, window=window)
        loss1, levered = run(vae, z, target, params, mode=mode, window=window, recompute=True,
                             offload_cache=True, micro_batch=1, **levers)
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    assert abs(float(loss1) - float(loss0)) <= RTOL * abs(float(loss0))
    assert rel_err(levered, plain) < RTOL


@pytest.fixture(scope="module")
def plain_run(memoise):
    """``run`` without levers (plain truncation), once per VAE, inputs, parameters, mode and window.
    Called where the test would run it (its parameters requiring grad)."""
    return memoise(lambda vae, z, target, params=(), *, mode, window:
                   run(vae, z, target, params, mode=mode, window=window))


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
    def test_planned_levers_equal_plain_truncation(self, wan, plain_run, plan, mode, window, monkeypatch):
        vae, z, target = wan
        stores, fetches = [], []
        store, fetch = cg.decoder.CacheOffloader.store, cg.decoder.CacheOffloader.fetch
        monkeypatch.setattr(cg.decoder.CacheOffloader, "store",
                            lambda self, k, t, ring=None: stores.append(k) or store(self, k, t, ring))
        monkeypatch.setattr(cg.decoder.CacheOffloader, "fetch",
                            lambda self, items: fetches.extend(k for k, _ in items) or fetch(self, items))
        params = [p for p in cg.wrap(vae).parameters()][-4:]  # the head's: reached by every group
        assert_levered_equals_plain(vae, z, target, params, plain_run,
                                    mode=mode, window=window, recompute_plan=PLANS[plan])
        assert any(isinstance(k, tuple) and k[0] == "ckpt" for k in stores) == PLANS[plan].offload_checkpoints
        assert any(isinstance(k, int) for k in stores), "the cache was not offloaded"
        # Every window after the first two starts from a snapshot in host memory (any buffer of
        # its ring) and must fetch it: on the CPU a missed fetch would still compute correctly.
        assert any(isinstance(k, int) for k in fetches), "no snapshot came back from host memory"

    @pytest.mark.parametrize("early_start", [True, False])
    def test_fetches_ahead_of_every_block(self, wan, plain_run, early_start, monkeypatch):
        """Every block but a group's first finds its input slots already on their way (a block
        without slots, the 2D upsampler, starts the next block's fetch too), and backward's
        prefetch of the next block at its first strip or its last keeps the gradient."""
        from chopgrad_core.adapters import wan as wan_adapter

        vae, z, target = wan
        late = []
        ready = wan_adapter._SlotIO.ready

        def checked(self, keys, start=None):
            keys = list(keys)
            waiting = {k for k, _ in self.pending}
            if keys and keys[0] > 0 and waiting & set(keys):
                late.append(keys)
            return ready(self, keys, start)

        monkeypatch.setattr(wan_adapter._SlotIO, "ready", checked)
        monkeypatch.setattr(wan_adapter._CheckpointSaver, "early_start", early_start)
        _, plain = plain_run(vae, z, target, mode="sliding", window=0)  # a plain decode reads no slot late
        _, levered = run(vae, z, target, mode="sliding", window=0, recompute=True, offload_cache=True,
                         micro_batch=1, recompute_plan=PLANS["all"])
        assert not late, f"blocks waited for slots nobody had fetched ahead of them: {late}"
        assert rel_err(levered, plain) < RTOL

    @pytest.mark.parametrize("lean", [True, False])
    def test_lean_forward_equals_plain_truncation(self, wan, plain_run, lean, monkeypatch):
        """The recomputation's causal convs pad inside the convolution and its RMS norms reduce
        straight from their input (or diffusers' modules as they are): gradients of every
        parameter and of the latents equal plain truncation's, and the lean modules did run."""
        from chopgrad_core.adapters import wan as wan_adapter

        vae, z, target = wan
        monkeypatch.setattr(wan_adapter, "LEAN_FORWARD", lean)
        calls = []
        for name in ("_lean_causal_conv", "_lean_rms_norm"):
            fn = getattr(wan_adapter, name)
            monkeypatch.setattr(wan_adapter, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n) or _f(*a, **k))
        params = cg.wrap(vae).parameters()
        # window 0: the lean forward only runs in the recomputation
        assert_levered_equals_plain(vae, z, target, params, plain_run,
                                    mode="sliding", window=0, recompute_plan=PLANS["strips+keep_low_levels"])
        assert set(calls) == ({"_lean_causal_conv", "_lean_rms_norm"} if lean else set())

    def test_lean_modules_match_diffusers_in_bf16(self, wan):
        from chopgrad_core.adapters import wan as wan_adapter

        vae = wan[0]
        resnet = vae.decoder.up_blocks[0].resnets[0]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, resnet.norm1.gamma.shape[0], 3, 5, 7, generator=g)
        assert torch.equal(wan_adapter._lean_rms_norm(resnet.norm1, x.bfloat16()), resnet.norm1(x.bfloat16()))
        conv = resnet.conv1
        x = torch.randn(1, conv.in_channels, 4, 6, 5, generator=g)
        cache = torch.randn(1, conv.in_channels, 2, 6, 5, generator=g)
        for c in (None, cache, cache[:, :, -1:]):
            assert torch.allclose(wan_adapter._lean_causal_conv(conv, x, c), conv(x, c), rtol=1e-5, atol=1e-6)

    def test_memory_budget_plans_and_stays_exact(self, wan, plain_run):
        vae, z, target = wan
        _, plain = plain_run(vae, z, target, mode="sliding", window=0)
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
        plan = RecomputePlan(offload_checkpoints=True, offload_min_bytes=0)
        assert_levered_equals_plain(vae, z, target, params, run,
                                    mode=mode, window=window, recompute_plan=plan)


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
    def test_strips_equal_plain_truncation(self, cog, plain_run, mode, window, kw, monkeypatch):
        from chopgrad_core.adapters import cogvideox

        vae, z, target = cog
        striped = []
        forward = cogvideox._StripBlock.forward
        monkeypatch.setattr(cogvideox._StripBlock, "forward", staticmethod(
            lambda ctx, run, n, *a: striped.append((type(run[0]).__name__, n)) or forward(ctx, run, n, *a)))
        params = cg.wrap(vae).parameters()[-6:]  # norm_out and conv_out: reached by every group
        # plain truncation: no strips
        assert_levered_equals_plain(vae, z, target, params, plain_run,
                                    mode=mode, window=window, **kw)
        # Resnets (two norms), upsamplers and the head all ran in strips.
        assert {name for name, n in striped if n > 1} == {"_ResnetRun", "_UpsampleRun", "_HeadRun"}


class TestCogVideoXResnetPasses:
    """A resnet in strips: backward in two strip passes (conv1's output gradient gathered in a map
    between them) instead of three, with or without conv1's output kept from the first pass for the
    second, and the forward's strips reusing conv1's output from the statistics pass: each alone and
    together, the gradients equal plain truncation's."""

    @pytest.mark.parametrize("split,reuse,keep,mode,window", [
        (True, True, False, "sliding", 0), (True, True, True, "sliding", 1), (False, True, False, "sliding", 0),
        (True, False, True, "block", 2)])
    def test_equal_plain_truncation(self, cog, plain_run, split, reuse, keep, mode, window, monkeypatch):
        from chopgrad_core.adapters import cogvideox

        vae, z, target = cog
        monkeypatch.setattr(cogvideox, "SPLIT_RESNET_BACKWARD", split)
        gradient_only = []  # convolutions run for their gradients only
        grad_only = cogvideox.grad_only
        monkeypatch.setattr(cogvideox, "grad_only", lambda conv: gradient_only.append(conv) or grad_only(conv))
        calls = {"first": 0, "second": 0}
        for name in calls:
            method = getattr(cogvideox._ResnetRun, name)
            monkeypatch.setattr(cogvideox._ResnetRun, name,
                                lambda self, *a, _m=method, _n=name: calls.__setitem__(_n, calls[_n] + 1) or _m(self, *a))
        params = cg.wrap(vae).parameters()  # every parameter: conv1's and norm1's too
        plan = RecomputePlan(strips=3, offload_checkpoints=True, offload_min_bytes=0, reuse_stats_pass=reuse,
                             keep_conv1_output=keep)
        # plain truncation: no resnet runs
        assert_levered_equals_plain(vae, z, target, params, plain_run,
                                    mode=mode, window=window, recompute_plan=plan)
        assert calls["second"] > 0 and calls["first"] > 0
        conv1s = {id(m.conv1.conv) for m in vae.decoder.modules() if isinstance(m, cogvideox.CogVideoXResnetBlock3D)}
        assert any(id(c) in conv1s for c in gradient_only) == (keep and split)

    def test_zq_indices_made_once_per_shape(self):
        from chopgrad_core.adapters import cogvideox

        zq = torch.randn(1, 2, 3, 4, 5)
        a = cogvideox._zq_rows(zq, (9, 16, 20), (3, 11))
        b = cogvideox._zq_rows(zq, (9, 16, 20), (0, 16))
        up = torch.nn.functional.interpolate  # as CogVideoXSpatialNorm3D: the first frame on its own
        reference = torch.cat([up(zq[:, :, :1], size=(1, 16, 20)), up(zq[:, :, 1:], size=(8, 16, 20))], dim=2)
        assert torch.equal(a, reference[..., 3:11, :]) and torch.equal(b, reference)
        assert cogvideox._zq_index_cached.cache_info().hits >= 1


class TestCogVideoXPiecePrefetch:
    """Checkpoint pieces in host memory come back a strip ahead across a block's backward passes and,
    with ``ahead_of_block``, the next strip block's first strip starts copying at a block's last strip:
    gradients equal plain truncation's, every started copy is used, and the first strips were found
    already on their way."""

    @pytest.mark.parametrize("ahead,mode,window", [(True, "sliding", 0), (True, "sliding", 1), (False, "sliding", 0)])
    def test_equal_plain_truncation(self, cog, plain_run, ahead, mode, window, monkeypatch):
        from chopgrad_core.adapters import cogvideox

        vae, z, target = cog
        monkeypatch.setattr(cogvideox._SavedOnHost, "ahead_of_block", ahead)
        found = []  # per strip block's first strip: whether its copy had been started before its backward
        first = cogvideox._SavedOnHost.first_strip
        monkeypatch.setattr(cogvideox._SavedOnHost, "first_strip",
                            lambda self, record: found.append(record in self.ahead) or first(self, record))
        params = cg.wrap(vae).parameters()
        plan = RecomputePlan(strips=3, offload_checkpoints=True, offload_min_bytes=0, reuse_stats_pass=True)
        assert_levered_equals_plain(vae, z, target, params, plain_run, mode=mode, window=window, recompute_plan=plan)
        # All but each window's first strip block in backward found its first strip on its way.
        assert found and (sum(found) >= len(found) // 2 if ahead else not any(found))


class TestCogVideoXCachePrefetch:
    """The streamed cache fetched a block later (``prefetch_cache=False``, planned at 848x1600 where the
    forward of the first full-resolution resnet peaks): the next block's entries are fetched only after
    a block has handed its own written entries over, and the gradients equal plain truncation's."""

    @pytest.mark.parametrize("prefetch,mode,window", [(False, "sliding", 0), (False, "sliding", 1),
                                                      (True, "sliding", 0)])
    def test_fetch_order_and_equal_plain_truncation(self, cog, plain_run, prefetch, mode, window, monkeypatch):
        from chopgrad_core.adapters import cogvideox

        vae, z, target = cog
        events = []
        get, put, fetch = cogvideox._CacheStream.get, cogvideox._CacheStream.put, cogvideox._CacheStream.fetch_entry
        monkeypatch.setattr(cogvideox._CacheStream, "get",
                            lambda self, path: events.append(("get", path)) or get(self, path))
        monkeypatch.setattr(cogvideox._CacheStream, "put",
                            lambda self, path, entry: events.append(("put", path)) or put(self, path, entry))
        monkeypatch.setattr(cogvideox._CacheStream, "fetch_entry", staticmethod(
            lambda offload, path, entry, wait=False: events.append(("fetch", path))
            or fetch(offload, path, entry, wait)))
        params = cg.wrap(vae).parameters()[-6:]
        plan = RecomputePlan(strips=3, offload_checkpoints=True, offload_min_bytes=0, prefetch_cache=prefetch)
        assert_levered_equals_plain(vae, z, target, params, plain_run,
                                    mode=mode, window=window, recompute_plan=plan)
        # A fetch ahead (of an entry other than the one just asked for) follows a get with the prefetch,
        # a put without it.
        ahead, last = [], None  # the get or put before each fetch
        for kind, path in events:
            if kind != "fetch":
                last = (kind, path)
            elif path != () and last != ("get", path):
                ahead.append(last[0])
        assert ahead and set(ahead) == {"get" if prefetch else "put"}

    def test_planned_where_the_forward_peak_needs_it(self):
        from chopgrad_core.memory import plan_recompute_cogvideox

        def plan(h, w, budget):
            return plan_recompute_cogvideox(height=h, width=w, channels=128, frames=9, element_size=2,
                                            budget_gib=budget)

        assert plan(480, 720, 8).prefetch_cache and not plan(848, 1600, 16).prefetch_cache

    def test_conv1_output_kept_where_it_fits_beside_the_same_strips(self):
        from chopgrad_core.memory import plan_recompute_cogvideox

        def plan(h, w, budget):
            return plan_recompute_cogvideox(height=h, width=w, channels=128, frames=9, element_size=2,
                                            budget_gib=budget)

        # 480x720: budget 8 keeps it beside 5 strips (measured 7.56 GiB; 6.82 without), 7 does not (6
        # strips), 10 keeps it beside 4 (measured 8.41 GiB).
        assert plan(480, 720, 8).keep_conv1_output and plan(480, 720, 8).strips == 5
        assert not plan(480, 720, 7).keep_conv1_output
        assert plan(480, 720, 10).keep_conv1_output and plan(480, 720, 10).strips == 4
        assert not plan(848, 1600, 16).keep_conv1_output


class TestGradOnlyLastConv:
    """The recomputation runs each block's last convolution for its gradients only (no output values):
    on and off, Wan (whole blocks, strips, the lean forward) and CogVideoX (whole blocks, strips, the
    two-pass resnet backward), every parameter's gradient and the latents' equal plain truncation's,
    and with it on every recomputed block's last convolution skipped its forward."""

    @pytest.mark.parametrize("family,plan,lean,on", [
        ("wan", PLANS["all"], False, True), ("wan", PLANS["strips+keep_low_levels"], True, True),
        ("wan", RecomputePlan(), False, True), ("wan", PLANS["all"], False, False),
        ("cogvideox", RecomputePlan(strips=3, offload_checkpoints=True, offload_min_bytes=0), False, True),
        ("cogvideox", RecomputePlan(), False, True), ("cogvideox", RecomputePlan(strips=3), False, False),
    ])
    def test_equal_plain_truncation(self, wan, cog, plain_run, family, plan, lean, on, monkeypatch):
        from chopgrad_core import decoder
        from chopgrad_core.adapters import wan as wan_adapter

        vae, z, target = wan if family == "wan" else cog
        monkeypatch.setattr(decoder, "GRAD_ONLY_LAST_CONV", on)
        monkeypatch.setattr(wan_adapter, "LEAN_FORWARD", lean)
        skipped, backward = [], decoder._GradOnlyConv.backward
        monkeypatch.setattr(decoder._GradOnlyConv, "backward",
                            staticmethod(lambda ctx, g: skipped.append(g.shape) or backward(ctx, g)))
        params = cg.wrap(vae).parameters()
        assert_levered_equals_plain(vae, z, target, params, plain_run, mode="sliding", window=0, recompute_plan=plan)
        assert bool(skipped) == on
        if on and family == "wan":  # head, upsamplers and resnets: 3-channel, 2D and 3D outputs
            assert {s[1] for s in skipped} >= {3} and {len(s) for s in skipped} == {4, 5}

    def test_output_shape_and_gradients_match_the_convolution(self):
        from chopgrad_core.decoder import grad_only_conv

        g = torch.Generator().manual_seed(0)
        for conv, x in ((torch.nn.Conv3d(3, 5, 3, padding=(0, 1, 1)), torch.randn(2, 3, 4, 7, 6, generator=g)),
                        (torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
                         torch.randn(1, 4, 9, 8, generator=g))):
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = conv(xa), grad_only_conv(conv, xb)
            assert ya.shape == yb.shape
            gy = torch.randn(ya.shape, generator=g)
            ga = torch.autograd.grad(ya, [xa, *conv.parameters()], gy)
            gb = torch.autograd.grad(yb, [xb, *conv.parameters()], gy)
            for a, b in zip(ga, gb):
                assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


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
