"""chopgrad_core's hand-written metrics against independent implementations.

LPIPS: against the official `lpips` package (richzhang/PerceptualSimilarity, 0.1.4), with the same
random backbone and the same linear weights (the official v0.1 files shipped in the package, and
random ones). The official package imports torchvision, whose PyPI build does not import beside the
torch CPU wheel this project pins (`torchvision::nms does not exist`), and `pip install lpips` would
replace torch; so the package is installed with `pip install --no-deps lpips==0.1.4` and imported
here with a stand-in `torchvision.models` that only provides what `lpips/pretrained_networks.py`
takes from it: the randomly initialised `vgg16().features` / `alexnet().features` stacks, written
out below in torchvision's layout (in-place ReLUs, final max-pool) independently of
`chopgrad_core.lpips`. Everything else (scaling layer, layer slicing, unit normalisation, linear
heads, spatial average and upsampling) is the official code. The weights reach our model through
its public loader (`LPIPS.from_local`), so the key layout is checked as well.

PSNR and SSIM: against scikit-image's `peak_signal_noise_ratio` / `structural_similarity`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from chopgrad_core.lpips import LPIPS

skimage_metrics = pytest.importorskip("skimage.metrics")  # dev extra: scikit-image==0.26.0


def _import_metrics():
    """The module under test: its new home with the heads first, then the old path."""
    for name in ("chopgrad_core.heads.metrics", "chopgrad_core.metrics"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise
    raise ModuleNotFoundError("neither chopgrad_core.heads.metrics nor chopgrad_core.metrics")


metrics = _import_metrics()

# --------------------------------------------------------------------------------------------------
# The official lpips package, with a stand-in for torchvision's backbone factories
# --------------------------------------------------------------------------------------------------

_LPIPS_INSTALL = "pip install --no-deps lpips==0.1.4  (its torchvision requirement would replace torch)"


def _tv_vgg16_features() -> nn.Sequential:
    """torchvision.models.vgg16().features: configuration "D", no batch norm, 31 modules."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = v
    return nn.Sequential(*layers)


def _tv_alexnet_features() -> nn.Sequential:
    """torchvision.models.alexnet().features: 13 modules."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _backbone_factory(features):
    def build(pretrained: bool = False, **_: object) -> types.SimpleNamespace:
        assert not pretrained, "the twin test never loads (or downloads) ImageNet weights"
        return types.SimpleNamespace(features=features())

    return build


@contextlib.contextmanager
def _torchvision_stand_in():
    """`torchvision` / `torchvision.models` in sys.modules only while the official package imports."""
    models = types.ModuleType("torchvision.models")
    models.vgg16 = _backbone_factory(_tv_vgg16_features)
    models.alexnet = _backbone_factory(_tv_alexnet_features)
    tv = types.ModuleType("torchvision")
    tv.models = models
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
    sys.modules.update({"torchvision": tv, "torchvision.models": models})
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = old


@pytest.fixture(scope="module")
def official():
    """The official `lpips` package (its top-level module, exposing LPIPS and normalize_tensor)."""
    if importlib.util.find_spec("lpips") is None:
        pytest.fail(f"the official lpips package is not installed: {_LPIPS_INSTALL}")
    with _torchvision_stand_in():
        package = importlib.import_module("lpips")
    assert hasattr(package, "LPIPS") and hasattr(package, "normalize_tensor")
    return package


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small CPU convolutions run several times faster on one thread than on an oversubscribed pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["alex", "vgg"])
def twins(request, official, tmp_path_factory):
    """(net, official model, ours) sharing one random backbone and the official v0.1 linear weights,
    moved into ours through a weights file and the public loader."""
    net = request.param
    torch.manual_seed(0)
    with _torchvision_stand_in():  # the backbone is built in the constructor
        ref = official.LPIPS(pretrained=True, net=net, version="0.1", pnet_rand=True, verbose=False)
    ref.eval()
    # Official keys `net.slice{k}.{index}.*` hold torchvision `features.{index}.*`.
    state = {}
    for key, value in ref.state_dict().items():
        parts = key.split(".")
        if parts[0] == "net":
            state[".".join(["features", *parts[2:]])] = value.clone()
        elif parts[0].startswith("lin") and parts[1] == "model":
            state[key] = value.clone()
    assert len(state) == {"alex": 15, "vgg": 31}[net]  # 5 or 13 convs (weight, bias) + 5 heads
    path = tmp_path_factory.mktemp("lpips") / f"lpips_{net}.safetensors"
    safetensors.torch.save_file(state, str(path))
    return net, ref, LPIPS.from_local(path, net=net)


def _random_heads(ref, ours) -> None:
    """The same random non-negative linear heads in both models (not the shipped values)."""
    g = torch.Generator().manual_seed(9)
    heads = {}
    for i in range(5):
        w = getattr(ref, f"lin{i}").model[1].weight
        heads[f"lin{i}.model.1.weight"] = torch.rand(w.shape, generator=g)
        w.data = heads[f"lin{i}.model.1.weight"].clone()
    missing, unexpected = ours.load_state_dict(heads, strict=False)
    assert not unexpected


def _images(n: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(n, 3, h, w, generator=g)).clamp(-1, 1)
    return x, y


class TestLPIPSAgainstOfficialPackage:
    """LPIPS(x, y) equals the official lpips.LPIPS for the same random backbone and linear weights
    (official v0.1 heads, then random heads): the distance per image, the spatial map at sizes the
    taps do not divide (bilinear per tap) and the input gradient."""

    def test_same_weights_give_equal_distance(self, twins) -> None:
        _, ref, ours = twins
        x, y = _images(3, 32, 36, seed=1)
        with torch.no_grad():
            expected = ref(x, y).flatten()
            got = ours(x, y)
        assert got.shape == (3,)
        assert expected.abs().min() > 0  # a non-trivial comparison
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)

    def test_same_weights_give_equal_spatial_map(self, twins) -> None:
        net, ref, ours = twins
        size = {"alex": (50, 45), "vgg": (24, 40)}[net]
        x, y = _images(2, *size, seed=2)
        ref.spatial = True  # the official constructor flag, read in forward
        try:
            with torch.no_grad():
                expected = ref(x, y)
                got = ours(x, y, spatial=True)
        finally:
            ref.spatial = False
        assert got.shape == expected.shape == (2, 1, *size)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)

    def test_same_weights_give_equal_input_gradient(self, twins) -> None:
        _, ref, ours = twins
        x, y = _images(2, 32, 32, seed=3)
        grads = []
        for model in (ref, ours):
            xi = x.clone().requires_grad_(True)
            model(xi, y).sum().backward()
            grads.append(xi.grad)
        assert torch.isfinite(grads[0]).all() and grads[0].abs().max() > 0
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-7)

    def test_same_random_heads_give_equal_distance(self, twins) -> None:
        # Last in the class: it replaces the shared models' heads.
        _, ref, ours = twins
        _random_heads(ref, ours)
        x, y = _images(2, 32, 32, seed=4)
        with torch.no_grad():
            torch.testing.assert_close(ours(x, y), ref(x, y).flatten(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# PSNR and SSIM against scikit-image
# --------------------------------------------------------------------------------------------------


def _clip_pair(seed: int, shape=(3, 4, 24, 20), noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(*shape, generator=g) * 2 - 1
    x = (ref + noise * torch.randn(*shape, generator=g)).clamp(-1, 1)
    return x, ref


class TestPSNRAgainstScikitImage:
    """psnr(x, ref) of a clip (c F H W or 1 c F H W) in [-1, 1] equals skimage's
    peak_signal_noise_ratio with data_range=2 over the whole clip; identical clips give inf."""

    @pytest.mark.parametrize("noise", [0.01, 0.1, 0.5])
    def test_noisy_clip_equals_skimage(self, noise: float) -> None:
        x, ref = _clip_pair(5, noise=noise)
        expected = skimage_metrics.peak_signal_noise_ratio(ref.double().numpy(), x.double().numpy(), data_range=2.0)
        assert metrics.psnr(x, ref) == pytest.approx(expected, rel=1e-5)
        assert metrics.psnr(x[None], ref[None]) == pytest.approx(expected, rel=1e-5)

    def test_identical_clips_give_inf_like_skimage(self) -> None:
        _, ref = _clip_pair(6)
        with np.errstate(divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = skimage_metrics.peak_signal_noise_ratio(ref.numpy(), ref.numpy(), data_range=2.0)
        assert expected == np.inf
        assert metrics.psnr(ref.clone(), ref) == float("inf")


class TestSSIMScoreAgainstScikitImage:
    """ssim_score(x, ref) of a clip equals the mean over frames of skimage's structural_similarity
    (Gaussian window sigma 1.5, population covariance, data_range 2, channels averaged)."""

    def test_noisy_clip_equals_mean_of_skimage_frames(self) -> None:
        x, ref = _clip_pair(7, noise=0.2)
        per_frame = [
            skimage_metrics.structural_similarity(
                x[:, f].double().numpy(), ref[:, f].double().numpy(), gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False, data_range=2.0, channel_axis=0,
            )
            for f in range(x.shape[1])
        ]
        assert metrics.ssim_score(x, ref) == pytest.approx(float(np.mean(per_frame)), abs=1e-4)
        assert metrics.ssim_score(ref, ref) == pytest.approx(1.0, abs=1e-6)
