"""The sampler: guidance on the controls is the classifier-free-style extrapolation, a chunk keeps
its prefix latents exactly, and chunked videos continue each chunk from the previous one."""

from __future__ import annotations

import pytest
import torch

from drivegen.model.sampler import chunk_starts, null_conditions, sample_latents, sample_video

SHAPE = (1, 2, 4, 3, 2, 2)  # B K C t h w


class ToyModel(torch.nn.Module):
    """Velocity linear in the latents (frames coupled through their mean, as attention couples them)
    with a term per condition: guidance is then checkable by hand."""

    def forward(self, x, t, control, cond, image_hw):
        boxes = cond["box_mask"].float().sum(dim=(2, 3)).view(x.shape[0], x.shape[1], 1, 1, 1, 1)
        return 0.5 * x + 0.3 * x.mean(dim=3, keepdim=True) + control[:, :, : x.shape[2]] + 0.1 * boxes + 1e-4 * t.view(-1, 1, 1, 1, 1, 1)


def conditions(t: int = SHAPE[3]):
    control = torch.randn((1, 2, 4, t, 2, 2), generator=torch.Generator().manual_seed(1))
    cond = {"box_mask": torch.ones(1, 2, t, 3, dtype=torch.bool)}
    return control, cond


class TestGuidance:
    """guidance g gives v_null + g (v_cond - v_null), null = zero controls and no boxes; g = 1 is the plain sampler."""

    def test_guided_velocity_is_the_extrapolation(self):
        control, cond = conditions()
        model = ToyModel()
        calls = []

        class Recording(torch.nn.Module):
            def forward(self, x, t, c, d, hw):
                v = model(x, t, c, d, hw)
                calls.append((x.clone(), c, d, v))
                return v

        sample_latents(Recording(), control, cond, SHAPE, (16, 16), steps=1, guidance=3.0)
        (x, c1, d1, v_cond), (_, c0, d0, v_null) = calls
        assert torch.equal(c0, torch.zeros_like(control)) and not d0["box_mask"].any()
        assert torch.equal(c1, control) and d1["box_mask"].all()
        # One Euler step from sigma 1 to 0: x0 = x - v with v the guided velocity.
        out = sample_latents(model, control, cond, SHAPE, (16, 16), steps=1, guidance=3.0)
        torch.testing.assert_close(out, x - (v_null + 3.0 * (v_cond - v_null)))

    def test_guidance_one_makes_one_call_per_step_and_differs_from_guided(self):
        control, cond = conditions()
        plain = sample_latents(ToyModel(), control, cond, SHAPE, (16, 16), steps=3)
        guided = sample_latents(ToyModel(), control, cond, SHAPE, (16, 16), steps=3, guidance=2.0)
        assert not torch.allclose(plain, guided)

    def test_null_conditions_keep_cameras(self):
        control, cond = conditions()
        cond["intrinsics"] = torch.eye(3)
        _, null = null_conditions(control, cond)
        assert null["intrinsics"] is cond["intrinsics"]


class TestContinuation:
    """A prefix is kept exactly; chunks continue from the previous chunk's last latent frames and
    are conditioned on their own frames."""

    def test_prefix_frames_are_exact_in_the_output(self):
        control, cond = conditions()
        prefix = torch.randn(1, 2, 4, 1, 2, 2)
        out = sample_latents(ToyModel(), control, cond, SHAPE, (16, 16), steps=4, prefix_BKCohw=prefix)
        assert torch.equal(out[:, :, :, :1], prefix)
        free = sample_latents(ToyModel(), control, cond, SHAPE, (16, 16), steps=4)
        assert not torch.allclose(out[:, :, :, 1:], free[:, :, :, 1:])  # the rest follows the prefix

    @pytest.mark.parametrize("n, chunk, overlap, starts", [(2, 2, 1, [0]), (4, 2, 1, [0, 1, 2]), (5, 3, 1, [0, 2]),
                                                           (6, 3, 1, [0, 2, 3]), (9, 4, 2, [0, 2, 4, 5])])
    def test_chunk_starts_cover_the_video_with_the_overlap(self, n, chunk, overlap, starts):
        assert chunk_starts(n, chunk, overlap) == starts

    def test_overlap_not_below_chunk_is_an_error(self):
        with pytest.raises(ValueError, match="overlap=2"):
            chunk_starts(5, 2, 2)

    def test_chunked_video_continues_each_chunk_and_one_chunk_equals_sample_latents(self):
        n = 7
        control, cond = conditions(n)
        asked = []

        def inputs(start, length):
            asked.append((start, length))
            return control[:, :, :, start:start + length], {"box_mask": cond["box_mask"][:, :, start:start + length]}

        model = ToyModel()
        video = sample_video(model, inputs, (1, 2, 4, 2, 2), n, (16, 16), chunk=3, overlap=1, steps=3, seed=5)
        assert asked == [(0, 3), (2, 3), (4, 3)]
        assert video.shape == (1, 2, 4, n, 2, 2)
        first = sample_latents(model, *inputs(0, 3), (1, 2, 4, 3, 2, 2), (16, 16), steps=3, seed=5)
        torch.testing.assert_close(video[:, :, :, :2], first[:, :, :, :2])
        # chunk 1 kept chunk 0's last frame as its first
        second = sample_latents(model, *inputs(2, 3), (1, 2, 4, 3, 2, 2), (16, 16), steps=3, seed=5 + 1_000_003,
                                prefix_BKCohw=first[:, :, :, 2:3])
        torch.testing.assert_close(video[:, :, :, 2:5], second)
        assert torch.equal(second[:, :, :, :1], first[:, :, :, 2:3])
