"""Pixel losses that decompose over frames, so the engine can evaluate them one frame group at a time.

A loss here is a masked, frame-weighted mean of a per-pixel (or per-frame) loss map::

    L = sum_{b,f} w[b,f] * num[b,f] / sum_{b,f} w[b,f] * den[b,f]

where ``num[b,f]`` sums the loss map of frame f of sample b under the mask and ``den[b,f]`` counts
the pixels under the mask. The denominator depends only on shapes, mask and weights, so it is
known before anything is decoded; each group then contributes ``sum w * num`` over its own frames
divided by the global denominator, and the group contributions add up to exactly ``L``. Without a
mask or weights, L1 and MSE reduce to ``F.l1_loss`` / ``F.mse_loss`` with mean reduction.

Shape legend: B batch, c channels, f frames of a group, F all frames, H W image size. Frames are in
[-1, 1]. Loss maps are computed in float32 whatever the decoder's dtype.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from typing import Union

import torch
import torch.nn.functional as F

from chopgrad_core.errors import ChopGradError, ShapeError


def _frames_as_images(x: torch.Tensor) -> torch.Tensor:
    """(B c f H W) -> (B*f c H W)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _mask_plane(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A mask broadcast to (B 1 f H W): channel-averaged, for losses whose map has no channels."""
    b, _, f, h, w = shape
    return mask.float().mean(dim=1, keepdim=True).expand(b, 1, f, h, w)


class PixelLoss(abc.ABC):
    """One loss term. Subclasses give the per-frame numerator and denominator (both (B f))."""

    name: str = "?"
    supports_mask: bool = True

    @abc.abstractmethod
    def numerator(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor: ...

    @abc.abstractmethod
    def denominator(self, shape: tuple[int, ...], mask: torch.Tensor | None, device: torch.device) -> torch.Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _Elementwise(PixelLoss):
    def numerator(self, pred, target, mask):
        err = self._map(pred.float(), target.float())  # (B c f H W)
        if mask is not None:
            err = err * mask.float()
        return err.sum(dim=(1, 3, 4))

    def denominator(self, shape, mask, device):
        b, c, f, h, w = shape
        if mask is None:
            return torch.full((b, f), float(c * h * w), device=device)
        return mask.float().expand(b, c, f, h, w).sum(dim=(1, 3, 4))

    @abc.abstractmethod
    def _map(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


class L1(_Elementwise):
    name = "l1"

    def _map(self, pred, target):
        return (pred - target).abs()


class MSE(_Elementwise):
    name = "mse"

    def _map(self, pred, target):
        return (pred - target).square()


class SSIM(PixelLoss):
    """1 - SSIM, averaged over the valid (un-padded) SSIM map; a mask is cropped to that map."""

    name = "ssim"

    def __init__(self, window_size: int = 11, sigma: float = 1.5) -> None:
        self.window_size, self.sigma = window_size, sigma

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        r = (self.window_size - 1) // 2
        return x[..., r : x.shape[-2] - (self.window_size - 1 - r), r : x.shape[-1] - (self.window_size - 1 - r)]

    def numerator(self, pred, target, mask):
        from chopgrad_core.ssim import ssim_map

        b, _, f, _, _ = pred.shape
        loss = 1.0 - ssim_map(_frames_as_images(pred), _frames_as_images(target), window_size=self.window_size,
                              sigma=self.sigma)  # (B*f H' W')
        loss = loss.reshape(b, f, *loss.shape[-2:])
        if mask is not None:
            loss = loss * self._crop(_mask_plane(mask, pred.shape)[:, 0])
        return loss.sum(dim=(2, 3))

    def denominator(self, shape, mask, device):
        b, _, f, h, w = shape
        hv, wv = h - self.window_size + 1, w - self.window_size + 1
        if mask is None:
            return torch.full((b, f), float(hv * wv), device=device)
        return self._crop(_mask_plane(mask, shape)[:, 0]).sum(dim=(2, 3))


class MSSSIM(PixelLoss):
    """1 - MS-SSIM per frame. A per-frame score, so per-pixel masks do not apply."""

    name = "ms_ssim"
    supports_mask = False

    def __init__(self, weights: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)) -> None:
        # Five scales (the paper's) need frames of at least 161 px; fewer weights, fewer scales.
        self.weights = weights

    def numerator(self, pred, target, mask):
        from chopgrad_core.ssim import ms_ssim

        b, _, f, _, _ = pred.shape
        score = ms_ssim(_frames_as_images(pred), _frames_as_images(target), weights=self.weights)
        return (1.0 - score).reshape(b, f)

    def denominator(self, shape, mask, device):
        return torch.ones(shape[0], shape[2], device=device)


class LPIPSLoss(PixelLoss):
    """LPIPS distance (Zhang et al. 2018) from local weights; its spatial map takes per-pixel masks."""

    name = "lpips"

    def __init__(self, weights: str | os.PathLike, net: str = "vgg") -> None:
        from chopgrad_core.lpips import LPIPS

        self.weights = weights
        self.model = LPIPS.from_local(weights, net=net)

    def numerator(self, pred, target, mask):
        b, _, f, _, _ = pred.shape
        self.model.to(pred.device)
        dist = self.model(_frames_as_images(pred).float(), _frames_as_images(target).float(), spatial=True)
        dist = dist.reshape(b, f, *dist.shape[-2:])  # (B f H W)
        if mask is not None:
            dist = dist * _mask_plane(mask, pred.shape)[:, 0]
        return dist.sum(dim=(2, 3))

    def denominator(self, shape, mask, device):
        b, _, f, h, w = shape
        if mask is None:
            return torch.full((b, f), float(h * w), device=device)
        return _mask_plane(mask, shape)[:, 0].sum(dim=(2, 3))

    def __repr__(self) -> str:
        return f"LPIPSLoss(weights={str(self.weights)!r})"


_BY_NAME = {"l1": L1, "mse": MSE, "ssim": SSIM, "ms_ssim": MSSSIM}
LOSS_NAMES = (*_BY_NAME, "lpips")

LossSpec = Union[str, PixelLoss, Mapping]


def resolve(loss: LossSpec, *, lpips_weights: str | os.PathLike | None = None) -> list[tuple[PixelLoss, float]]:
    """Turn ``"l1"``, a :class:`PixelLoss`, or ``{"l1": 1.0, "lpips": 0.2}`` into weighted terms."""
    if isinstance(loss, Mapping):
        terms = []
        for key, w in loss.items():
            (term, _), = resolve(key, lpips_weights=lpips_weights)
            terms.append((term, float(w)))
        if not terms:
            raise ChopGradError("loss={} has no terms; give e.g. loss={'l1': 1.0}")
        return terms
    if isinstance(loss, PixelLoss):
        return [(loss, 1.0)]
    if loss == "lpips":
        if lpips_weights is None:
            raise ChopGradError(
                "loss='lpips' needs local LPIPS weights: set the config key chopgrad.lpips_weights "
                "(or pass lpips_weights=PATH, or loss=LPIPSLoss(PATH)); nothing is downloaded"
            )
        return [(LPIPSLoss(lpips_weights), 1.0)]
    if loss not in _BY_NAME:
        raise ChopGradError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_NAMES)} or pass a PixelLoss")
    return [(_BY_NAME[loss](), 1.0)]


class FrameLoss:
    """The weighted sum of terms, evaluated group by group against a fixed global denominator."""

    def __init__(self, terms: list[tuple[PixelLoss, float]], target: torch.Tensor,
                 mask: torch.Tensor | None, weight: torch.Tensor | None) -> None:
        self.terms, self.target, self.mask = terms, target, mask
        b, _, f = target.shape[:3]
        self.weight = (torch.ones(b, f, device=target.device) if weight is None
                       else weight.to(target.device, torch.float32).expand(b, f))
        for term, _ in terms:
            if mask is not None and not term.supports_mask:
                raise ChopGradError(f"loss {term.name!r} is a per-frame score and takes no mask; drop mask= or "
                                    "use l1, mse, ssim or lpips")
        self.norms = [(self.weight * t.denominator(tuple(target.shape), mask, target.device)).sum().clamp_min(1e-12)
                      for t, _ in terms]

    def __call__(self, frames: torch.Tensor, pixel: slice, batch: slice = slice(None)) -> torch.Tensor:
        """This loss's share from ``frames`` = frames ``pixel`` of samples ``batch``."""
        target = self.target[batch, :, pixel]
        mask = None if self.mask is None else self.mask[batch if self.mask.shape[0] > 1 else slice(None), :, pixel]
        weight = self.weight[batch, pixel]
        total = frames.new_zeros((), dtype=torch.float32)
        for (term, w), norm in zip(self.terms, self.norms):
            total = total + w * (weight * term.numerator(frames, target, mask)).sum() / norm
        return total


def check_mask_and_weight(mask: torch.Tensor | None, weight: torch.Tensor | None, target: torch.Tensor) -> None:
    b, c, f, h, w = target.shape
    if mask is not None:
        ok = (mask.dim() == 5 and mask.shape[0] in (1, b) and mask.shape[1] in (1, c) and mask.shape[2] == f
              and mask.shape[3:] == (h, w))
        if not ok:
            raise ShapeError(f"mask must have shape (B|1, 1|{c}, {f}, {h}, {w}) to match target {tuple(target.shape)}, "
                             f"got {tuple(mask.shape)}")
    if weight is not None:
        if not (weight.shape == (f,) or weight.shape == (b, f)):
            raise ShapeError(f"weight must be per frame: shape ({f},) or ({b}, {f}), got {tuple(weight.shape)}")
        if not torch.isfinite(weight).all() or (weight < 0).any():
            raise ChopGradError("weight must be finite and >= 0")
