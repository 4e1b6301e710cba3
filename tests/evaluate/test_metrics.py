"""FID / FVD: the Fréchet distance matches closed forms and an independent scipy twin, identical sets
score ~0, feature networks load only from local files and a missing one names its key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivegen.errors import WeightsFileError
from drivegen.evaluate.features import FrameFeatures, VideoFeatures, frechet_distance
from feature_nets import save_feature_nets


def _twin(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance, written out with scipy's sqrtm (pytorch-fid itself
    imports torchvision, which this environment cannot import)."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class TestFrechetDistance:
    """torchmetrics' Fréchet distance on given features, checked against independent computations."""

    def test_one_dimensional_closed_form(self):
        rng = np.random.default_rng(0)
        a, b = rng.normal(0.0, 1.0, (400, 1)), rng.normal(2.0, 3.0, (300, 1))
        # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for 1-D Gaussians (unbiased sample std, as torchmetrics uses).
        want = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
        assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6)

    def test_matches_the_scipy_twin_on_correlated_features(self):
        rng = np.random.default_rng(1)
        mix = rng.normal(size=(6, 6))
        a = rng.normal(size=(200, 6)) @ mix
        b = rng.normal(size=(150, 6)) @ (mix + 0.3 * rng.normal(size=(6, 6))) + 0.5
        assert frechet_distance(a, b) == pytest.approx(_twin(a, b), rel=1e-6)

    def test_identical_sets_score_zero(self):
        a = np.random.default_rng(2).normal(size=(50, 16))
        assert abs(frechet_distance(a, a)) < 1e-8

    def test_fewer_than_two_samples_is_an_error(self):
        with pytest.raises(ValueError, match="needs >= 2 samples"):
            frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))


class TestFeatureNetworks:
    """TorchScript files are the only source of feature networks; nothing downloads."""

    def test_identical_videos_give_fid_and_fvd_near_zero(self, tmp_path):
        fid_file, fvd_file = save_feature_nets(tmp_path)
        videos = torch.rand(4, 3, 5, 32, 48) * 2 - 1  # (B, 3, T, H, W)
        frames = videos.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*T, 3, H, W)
        f = FrameFeatures(str(fid_file), torch.device("cpu"))(frames)
        v = VideoFeatures(str(fvd_file), torch.device("cpu"))(videos)
        assert f.shape == (20, 16) and v.shape == (4, 8)
        assert abs(frechet_distance(f, f)) < 1e-8 and abs(frechet_distance(v, v)) < 1e-8
        other = FrameFeatures(str(fid_file), torch.device("cpu"))(torch.rand_like(frames) * 2 - 1)
        assert frechet_distance(f, other) > 1e-4  # the features do see the pixels

    @pytest.mark.parametrize("cls, key", [(FrameFeatures, "fid_weights"), (VideoFeatures, "fvd_weights")])
    def test_missing_weights_file_names_its_key(self, tmp_path, cls, key):
        with pytest.raises(WeightsFileError, match=rf"{key}=.*none\.pt.*never downloaded"):
            cls(str(tmp_path / "none.pt"), torch.device("cpu"))

    def test_a_file_that_is_not_torchscript_names_its_key(self, tmp_path):
        bad = tmp_path / "state.pt"
        torch.save({"w": torch.zeros(2)}, bad)
        with pytest.raises(WeightsFileError, match=r"fid_weights=.*not a TorchScript file"):
            FrameFeatures(str(bad), torch.device("cpu"))
