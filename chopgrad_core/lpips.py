"""LPIPS perceptual distance in plain torch, loaded only from local files.

References:
    Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep Features as a
    Perceptual Metric", CVPR 2018 (arXiv:1801.03924).
    github.com/richzhang/PerceptualSimilarity (package ``lpips``, weights v0.1): ScalingLayer
    constants, layer taps, unit normalisation, ``lin{i}.model.1.weight`` key layout, spatial mode.
    torchvision ``vgg16().features`` / ``alexnet().features``: the backbone module layout,
    re-declared here so torchvision state-dict keys (``features.0.weight``, ...) load without
    torchvision.

Nothing is ever downloaded. Build the single weights file once with the converter, which merges
torchvision's backbone checkpoint and the official linear-layer file::

    python -m chopgrad_core.lpips convert --net vgg --backbone vgg16-397923af.pth \\
        --lin vgg.pth --out lpips_vgg.safetensors
    python -m chopgrad_core.lpips convert --net alex --backbone alexnet-owt-7be5be79.pth \\
        --lin alex.pth --out lpips_alex.safetensors

then point the config key ``chopgrad.lpips_weights`` at the output and call
``LPIPS.from_local(path, net=...)``.

Shape legend:
    N     images (batch * frames, flattened by the caller)
    C     feature channels at one tap
    H, W  image height and width
    h, w  feature map size at one tap
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chopgrad_core.atomic import save_safetensors
from chopgrad_core.errors import ChopGradError, ShapeError, WeightsNotFoundError

__all__ = ["LPIPS", "convert", "main"]

Net = Literal["vgg", "alex"]

CONFIG_KEY = "chopgrad.lpips_weights"

# Indices in torchvision's `features` whose outputs LPIPS compares (vgg: relu1_2, relu2_2, relu3_3,
# relu4_3, relu5_3; alex: relu1..relu5), and the channel count at each.
_TAPS: dict[str, tuple[int, ...]] = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11)}
_CHANNELS: dict[str, tuple[int, ...]] = {
    "vgg": (64, 128, 256, 512, 512),
    "alex": (64, 192, 384, 256, 256),
}
# Smallest H, W for which every tap is at least 1x1: vgg halves four times before relu5_3; alex's
# stride-4 conv1 and two 3x3/2 max-pools need 31 pixels.
_MIN_SIZE: dict[str, int] = {"vgg": 16, "alex": 31}
# torchvision's checkpoint names, only for error messages and docs.
_TORCHVISION_FILE: dict[str, str] = {
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
}

_CONVERT_HINT = (
    "build it with `python -m chopgrad_core.lpips convert --net {net} --backbone "
    "{backbone} --lin {net}.pth --out lpips_{net}.safetensors` (torchvision backbone checkpoint + "
    "the official lpips v0.1 linear-layer file)"
)


# --------------------------------------------------------------------------------------------------
# Backbones (torchvision module layout, truncated after the last tap)
# --------------------------------------------------------------------------------------------------


def _vgg16_features() -> nn.Sequential:
    """torchvision ``vgg16().features`` (config "D") up to relu5_3, index 29.

    The final max-pool (index 30) is dropped: it has no parameters, so the keys are unchanged.
    """
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            # Not in-place (torchvision uses inplace=True): the tapped activations must survive.
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
    """torchvision ``alexnet().features`` up to relu5, index 11 (final max-pool dropped)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
    )


_BACKBONES = {"vgg": _vgg16_features, "alex": _alexnet_features}


class _NetLinLayer(nn.Module):
    """Learned non-negative channel weights (a 1x1 conv to one channel), as ``lpips.NetLinLayer``.

    The Dropout at index 0 only exists so the official key ``model.1.weight`` lines up; LPIPS is
    always in eval mode, where it is the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, d_NChw: Tensor) -> Tensor:
        return self.model(d_NChw)  # (N, 1, h, w)


def _unit_normalize(f_NChw: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each feature vector by its L2 norm over channels (``lpips.normalize_tensor``).

    ``vector_norm`` instead of ``sqrt(sum(f**2))``: same value, but its backward gives 0 rather than
    NaN where a position's features are all zero, which dead ReLUs produce routinely.
    """
    return f_NChw / (torch.linalg.vector_norm(f_NChw, dim=1, keepdim=True) + eps)


# --------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between images in [-1, 1]; frozen, differentiable w.r.t. the inputs.

    Build with :meth:`from_local`; constructing directly gives random weights (tests only).
    The state dict holds exactly ``features.*`` (torchvision keys) and ``lin{i}.model.1.weight``.
    """

    def __init__(self, net: Net = "vgg") -> None:
        super().__init__()
        if net not in _BACKBONES:
            raise ChopGradError(f"net must be one of {sorted(_BACKBONES)}, got {net!r}")
        self.net = net
        self.taps = _TAPS[net]
        self.min_size = _MIN_SIZE[net]
        # ImageNet statistics expressed in [-1, 1] space (official ScalingLayer). Not persistent:
        # they are constants, not weights, and the official files do not contain them.
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.features = _BACKBONES[net]()
        # Named attributes (not a ModuleList) so the keys match the official file: lin0..lin4.
        for i, channels in enumerate(_CHANNELS[net]):
            self.add_module(f"lin{i}", _NetLinLayer(channels))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # A loss module usually sits inside a model whose .train() recurses into it; staying in eval
        # keeps the Dropout in the linear heads off, so the loss is deterministic.
        return super().train(False)

    @classmethod
    def from_local(cls, path: str | os.PathLike[str], net: Net = "vgg") -> LPIPS:
        """Load a single ``.safetensors`` (or ``.pth``/``.pt``) file holding both key sets."""
        path = Path(path)
        if not path.is_file():
            backbone = _TORCHVISION_FILE.get(net, "<torchvision checkpoint>")
            raise WeightsNotFoundError(
                f"LPIPS-{net} weights not found at {str(path)!r}. Set the config key "
                f"{CONFIG_KEY} to a local weights file (nothing is downloaded); "
                + _CONVERT_HINT.format(net=net, backbone=backbone)
            )
        model = cls(net)
        _load_checked(model, _read_state_dict(path), source=path)
        return model

    def forward(self, x: Tensor, y: Tensor, *, spatial: bool = False) -> Tensor:
        """Distance per image (N,), or with ``spatial=True`` a map (N, 1, H, W).

        x, y: (N, 3, H, W) in [-1, 1], any float dtype. The scalar is the sum over taps of each
        tap's spatial mean; the map is the sum of each tap's map upsampled bilinearly to (H, W)
        (official spatial mode), so its mean equals the scalar exactly when every tap size divides
        (H, W) evenly (vgg with H, W multiples of 16) and approximately otherwise.
        """
        self._check_inputs(x, y)
        N, _, H, W = x.shape
        dtype = self.features[0].weight.dtype  # float32 unless the caller cast the module
        # 1. Scale both images and run them through the backbone as one batch (no batch norm in
        #    either backbone, so concatenating does not couple the images).
        xy_2N3HW = (torch.cat([x, y], dim=0).to(dtype) - self.shift) / self.scale
        out = x.new_zeros((N, 1, H, W) if spatial else (N,), dtype=torch.float32)
        lin_at_tap = {tap: getattr(self, f"lin{i}") for i, tap in enumerate(self.taps)}
        h = xy_2N3HW
        for idx, layer in enumerate(self.features):
            h = layer(h)
            if idx not in lin_at_tap:
                continue
            # 2. Unit-normalise each tap over channels, squared difference, learned channel weights.
            f_x, f_y = h.chunk(2, dim=0)  # each (N, C, h, w)
            d_NChw = (_unit_normalize(f_x) - _unit_normalize(f_y)) ** 2
            layer_N1hw = lin_at_tap[idx](d_NChw).float()
            # 3. Reduce: spatial mean per tap, or upsample each tap's map to the input size.
            if spatial:
                out = out + F.interpolate(
                    layer_N1hw, size=(H, W), mode="bilinear", align_corners=False
                )
            else:
                out = out + layer_N1hw.mean(dim=(1, 2, 3))
        return out

    def _check_inputs(self, x: Tensor, y: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ShapeError(
                f"LPIPS needs x and y as (N, 3, H, W) RGB in [-1, 1] with the same shape, got x "
                f"{tuple(x.shape)} and y {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ShapeError(
                f"LPIPS-{self.net} needs H, W >= {self.min_size} so every layer tap is non-empty, "
                f"got images of shape {tuple(x.shape)}"
            )


# --------------------------------------------------------------------------------------------------
# Weights IO
# --------------------------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path, device="cpu")
    # weights_only: a checkpoint is data, never code to run.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ChopGradError(f"{str(path)!r} does not hold a flat state dict of tensors")
    return dict(state)


def _few(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _load_checked(model: LPIPS, state: Mapping[str, Tensor], source: Path | str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists the offending keys and the fix."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys [{_few(missing)}]")
        if unexpected:
            problems.append(f"unexpected keys [{_few(unexpected)}]")
        if mismatched:
            problems.append(f"shape mismatches [{_few(mismatched)}]")
        raise ChopGradError(
            f"{str(source)!r} does not hold LPIPS-{model.net} weights: " + "; ".join(problems)
            + ". Check the net argument, or "
            + _CONVERT_HINT.format(net=model.net, backbone=_TORCHVISION_FILE[model.net])
        )
    model.load_state_dict(state, strict=True)


def convert(
    net: Net,
    backbone: str | os.PathLike[str],
    lin: str | os.PathLike[str],
    out: str | os.PathLike[str],
) -> Path:
    """Merge torchvision's backbone checkpoint and the official lpips linear file into one file.

    Keeps the backbone's ``features.*`` (dropping torchvision's ``classifier.*``) and the ``lin*``
    keys; ``lins.{i}.`` (as saved from an ``lpips.LPIPS`` instance) is renamed to ``lin{i}.``.
    The merged dict is validated by loading it into an :class:`LPIPS` before anything is written.
    """
    backbone, lin, out = Path(backbone), Path(lin), Path(out)
    if out.suffix != ".safetensors":
        # from_local picks the reader by suffix; any other name would be read as a pickle.
        raise ChopGradError(f"--out must end in .safetensors, got {str(out)!r}")
    for path in (backbone, lin):
        if not path.is_file():
            raise WeightsNotFoundError(f"{str(path)!r} does not exist (converter input)")
    backbone_sd = _read_state_dict(backbone)
    lin_sd = _read_state_dict(lin)
    merged = {k: v for k, v in backbone_sd.items() if k.startswith("features.")}
    for k, v in lin_sd.items():
        k = re.sub(r"^lins\.(\d+)\.", r"lin\1.", k)
        if re.match(r"^lin\d+\.", k):
            merged[k] = v
    # safetensors refuses views that share storage; own copies keep the file self-contained.
    merged = {k: v.detach().contiguous().clone() for k, v in merged.items()}
    _load_checked(LPIPS(net), merged, source=f"{backbone} + {lin}")
    save_safetensors(merged, out, metadata={"net": net, "lpips_version": "0.1"})  # atomic
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chopgrad_core.lpips", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "convert", help="merge torchvision backbone + lpips linear weights into one .safetensors"
    )
    p.add_argument("--net", choices=sorted(_BACKBONES), required=True)
    p.add_argument("--backbone", required=True, help="torchvision checkpoint (vgg16-397923af.pth)")
    p.add_argument("--lin", required=True, help="official lpips v0.1 linear weights, e.g. vgg.pth")
    p.add_argument("--out", required=True, help=f"output .safetensors; point {CONFIG_KEY} at it")
    args = parser.parse_args(argv)
    out = convert(args.net, args.backbone, args.lin, args.out)
    print(f"wrote {out} (set {CONFIG_KEY}: {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
