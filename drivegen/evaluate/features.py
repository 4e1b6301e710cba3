"""FID per frame and FVD per clip: feature networks from local files, the Fréchet distance from torchmetrics.

Feature networks are the TorchScript files the field's FID and FVD numbers come from, loaded with
``torch.jit.load`` (no torchvision, no download, no network definition to keep in sync):

- FID: StyleGAN2-ADA's ``inception-2015-12-05.pt`` (also clean-fid's), called as
  ``net(frames_uint8_N3HW, return_features=True)`` -> (N, 2048); it resizes to 299 itself.
- FVD: StyleGAN-V's ``i3d_torchscript.pt``, called as
  ``net(videos_B3THW, rescale=True, resize=True, return_features=True)`` -> (B, 400) with videos as
  float 0..255 (it rescales to [-1, 1] and resizes to 224 itself). Each camera's video of a clip is
  one sample.

Any TorchScript module with the same call works (the tests save randomly initialised ones).

Why torchmetrics for the distance: it is maintained, computes the Fréchet distance in float64
(``FrechetInceptionDistance`` accumulates feature sums and covariances, then
``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` through eigenvalues), and accepts any feature
module, so the same code gives FID and FVD from features computed on Ray actors. Its own default
Inception would need torch-fidelity, and torch-fidelity and pytorch-fid both need torchvision,
which this environment cannot import; torchmetrics itself needs only torch, numpy, packaging and
lightning-utilities and leaves torch 2.13.0 as it is.

Sample sizes: the estimate is biased upwards for few samples (the covariance of N < D samples has
rank N - 1); compare FIDs only between methods evaluated on the same clips, as the report does.

Shape legend: N frames, B videos, T frames per video, D feature size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from drivegen.errors import WeightsFileError

__all__ = ["FrameFeatures", "VideoFeatures", "frechet_distance", "load_torchscript"]


def load_torchscript(path: str | None, key: str, device: torch.device) -> torch.jit.ScriptModule:
    """A TorchScript feature network from a local file; WeightsFileError naming ``key`` otherwise."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise WeightsFileError(f"{key}={str(path)!r}: no such file. Feature networks are never downloaded: put the "
                               f"TorchScript file there (see drivegen/evaluate/features.py) or set {key}=null")
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript in favour of torch.export, but the reference FID / FVD
            # networks are published as TorchScript files: loading them is the point.
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(p), map_location=device)
    except Exception as exc:  # torch raises RuntimeError / ValueError for non-TorchScript files
        raise WeightsFileError(f"{key}={str(path)!r} is not a TorchScript file ({type(exc).__name__}: "
                               f"{str(exc)[:200]}); export the network with torch.jit.save") from None
    return net.eval()


class FrameFeatures:
    """FID features of frames: (N, 3, H, W) float in [-1, 1] -> (N, D) float64 numpy."""

    def __init__(self, path: str, device: torch.device, key: str = "fid_weights") -> None:
        self.net, self.device = load_torchscript(path, key, device), device

    @torch.no_grad()
    def __call__(self, frames_N3HW: torch.Tensor, batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, frames_N3HW.shape[0], batch):
            x = ((frames_N3HW[i:i + batch].float().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8)
            out.append(self.net(x.to(self.device), return_features=True).double().cpu())
        return torch.cat(out).numpy()


class VideoFeatures:
    """FVD features of videos: (B, 3, T, H, W) float in [-1, 1] -> (B, D) float64 numpy."""

    def __init__(self, path: str, device: torch.device, key: str = "fvd_weights") -> None:
        self.net, self.device = load_torchscript(path, key, device), device

    @torch.no_grad()
    def __call__(self, videos_B3THW: torch.Tensor) -> np.ndarray:
        x = ((videos_B3THW.float().clamp(-1, 1) + 1) * 127.5).round()  # 0..255 as float, StyleGAN-V's input
        return self.net(x.to(self.device), rescale=True, resize=True, return_features=True).double().cpu().numpy()


class _Given(nn.Module):
    """torchmetrics' feature slot filled with features computed elsewhere (on the actors)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, features_ND: torch.Tensor) -> torch.Tensor:
        return features_ND


def frechet_distance(real_ND: np.ndarray, fake_ND: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torchmetrics' FID computation)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real_ND.shape[1] != fake_ND.shape[1]:
        raise ValueError(f"feature sizes differ: {real_ND.shape[1]} vs {fake_ND.shape[1]}")
    if min(len(real_ND), len(fake_ND)) < 2:
        raise ValueError(f"the Fréchet distance needs >= 2 samples per set, got {len(real_ND)} and {len(fake_ND)}")
    metric = FrechetInceptionDistance(feature=_Given(real_ND.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(torch.from_numpy(np.asarray(real_ND, np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake_ND, np.float64)), real=False)
    return float(metric.compute())
