"""Randomly initialised feature networks with the calling conventions of the real FID / FVD TorchScript
files (drivegen/evaluate/features.py), saved with torch.jit.save: the tests run the real loading path."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


class TinyInception(nn.Module):
    """``net(frames_uint8_N3HW, return_features=True)`` -> (N, 16), like inception-2015-12-05.pt."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        x = x.float() / 127.5 - 1.0
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        return x.mean(dim=(2, 3)) + x.std(dim=(2, 3))


class TinyI3D(nn.Module):
    """``net(videos_B3THW, rescale=True, resize=True, return_features=True)`` -> (B, 8), like i3d_torchscript.pt."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1)

    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        return torch.tanh(self.conv(x)).mean(dim=(2, 3, 4))


def save_feature_nets(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    fid, fvd = folder / "inception.pt", folder / "i3d.pt"
    torch.jit.save(torch.jit.script(TinyInception().eval()), str(fid))
    torch.jit.save(torch.jit.script(TinyI3D().eval()), str(fvd))
    return fid, fvd
