"""SSIM and MS-SSIM as differentiable pixel losses, in plain torch.

References:
    Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From Error Visibility to Structural
    Similarity", IEEE TIP 2004 (SSIM, Gaussian window sigma=1.5, K1=0.01, K2=0.03).
    Wang, Simoncelli, Bovik, "Multi-Scale Structural Similarity for Image Quality Assessment",
    Asilomar 2003 (MS-SSIM, the five scale weights).
    pytorch_msssim (github.com/VainF/pytorch-msssim): the MS-SSIM conventions followed here (2x2
    average pooling between scales, relu on each scale's term, per-channel product).

Inputs are images in [-1, 1], hence ``data_range=2.0``. Any float dtype is accepted; the statistics
are computed in float32 (variances are differences of squares, which bf16 cannot resolve) and the
result is float32.

Shape legend:
    N  images (batch * frames, flattened by the caller)
    C  channels
    H, W    image height and width
    H', W'  "valid" map size: H - window_size + 1, W - window_size + 1
    K  Gaussian window size
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from chopgrad_core.errors import ChopGradError, ShapeError

__all__ = ["ssim_map", "ssim", "ms_ssim"]


def _gaussian_window_K(window_size: int, sigma: float, device: torch.device) -> Tensor:
    """Normalised 1-D Gaussian centred on the middle tap (as in skimage, pytorch_msssim)."""
    coords_K = torch.arange(window_size, dtype=torch.float32, device=device) - window_size // 2
    g_K = torch.exp(-(coords_K**2) / (2 * sigma**2))
    return g_K / g_K.sum()


def _check_pair(x: Tensor, y: Tensor, window_size: int, min_size: int, why: str) -> None:
    if window_size < 1 or window_size % 2 == 0:
        # An even window has no centre tap, so the map would be shifted by half a pixel.
        raise ChopGradError(f"window_size must be a positive odd integer, got {window_size!r}")
    if x.ndim != 4 or x.shape != y.shape:
        raise ShapeError(
            f"x and y must both be (N, C, H, W) with the same shape, got x {tuple(x.shape)} "
            f"and y {tuple(y.shape)}"
        )
    if min(x.shape[-2:]) < min_size:
        raise ShapeError(
            f"images of shape {tuple(x.shape)} are too small: H and W must be >= {min_size} {why}"
        )


def _blur_valid(z_NCHW: Tensor, win_K: Tensor) -> Tensor:
    """Separable Gaussian blur with no padding ("valid"), each channel on its own."""
    C = z_NCHW.shape[1]
    k = win_K.numel()
    # Two 1-D passes cost 2K multiply-adds per pixel instead of K^2 for the 2-D kernel.
    z = F.conv2d(z_NCHW, win_K.view(1, 1, 1, k).expand(C, 1, 1, k), groups=C)  # (N, C, H, W')
    return F.conv2d(z, win_K.view(1, 1, k, 1).expand(C, 1, k, 1), groups=C)  # (N, C, H', W')


def _ssim_cs_maps(
    x_NCHW: Tensor, y_NCHW: Tensor, win_K: Tensor, c1: float, c2: float
) -> tuple[Tensor, Tensor]:
    """Per-pixel, per-channel SSIM and contrast-structure maps, both (N, C, H', W')."""
    C = x_NCHW.shape[1]
    # One grouped convolution over the five moment images instead of five separate calls.
    moments_N5CHW = torch.cat(
        [x_NCHW, y_NCHW, x_NCHW * x_NCHW, y_NCHW * y_NCHW, x_NCHW * y_NCHW], dim=1
    )
    mu_x, mu_y, e_xx, e_yy, e_xy = _blur_valid(moments_N5CHW, win_K).split(C, dim=1)
    # Population (biased) moments, as in the paper and skimage's use_sample_covariance=False.
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    cs = (2 * cov_xy + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return luminance * cs, cs


def ssim_map(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Per-pixel SSIM (N, H', W') over valid window positions, averaged over channels.

    x, y: (N, C, H, W). Border pixels where the window would leave the image are dropped rather than
    padded, so the mean of this map equals skimage's ``structural_similarity`` with
    ``gaussian_weights=True, use_sample_covariance=False`` (which crops the same border).
    """
    _check_pair(x, y, window_size, window_size, f"(window_size={window_size})")
    win_K = _gaussian_window_K(window_size, sigma, x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s_NCHW, _ = _ssim_cs_maps(x.float(), y.float(), win_K, c1, c2)
    return s_NCHW.mean(dim=1)  # (N, H', W')


def ssim(x: Tensor, y: Tensor, **kw: float) -> Tensor:
    """Mean SSIM per image, (N,). Keyword arguments are those of :func:`ssim_map`."""
    return ssim_map(x, y, **kw).mean(dim=(-2, -1))


def ms_ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 2.0,
    weights: Sequence[float] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333),
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Multi-scale SSIM per image, (N,).

    x, y: (N, C, H, W) with H, W >= (window_size - 1) * 2 ** (len(weights) - 1) + 1 (161 for the
    defaults), so the window still fits after the len(weights) - 1 halvings. Each of the first
    scales contributes its mean contrast-structure term, the last scale the full SSIM; the terms
    are combined per channel as prod_s relu(term_s) ** weight_s, then averaged over channels.
    """
    levels = len(weights)
    if levels < 1:
        raise ChopGradError(f"weights must name at least one scale, got {tuple(weights)!r}")
    # ceil(s / 2) per halving (odd sizes are padded), so the window fits the last scale iff
    # ceil(s / 2**(levels-1)) >= window_size, i.e. s > (window_size - 1) * 2**(levels-1).
    min_size = (window_size - 1) * 2 ** (levels - 1) + 1
    _check_pair(
        x, y, window_size, min_size,
        f"for MS-SSIM with {levels} scales and window_size={window_size}",
    )
    win_K = _gaussian_window_K(window_size, sigma, x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    weights_L = torch.tensor(list(weights), dtype=torch.float32, device=x.device)

    x_NCHW, y_NCHW = x.float(), y.float()
    terms = []  # each (N, C)
    for level in range(levels):
        s_NCHW, cs_NCHW = _ssim_cs_maps(x_NCHW, y_NCHW, win_K, c1, c2)
        if level < levels - 1:
            terms.append(cs_NCHW.mean(dim=(-2, -1)))
            # Pad odd sizes by one so no row/column is dropped (zero padding counted in the
            # average, exactly as pytorch_msssim does).
            padding = [s % 2 for s in x_NCHW.shape[-2:]]
            x_NCHW = F.avg_pool2d(x_NCHW, kernel_size=2, padding=padding)
            y_NCHW = F.avg_pool2d(y_NCHW, kernel_size=2, padding=padding)
        else:
            terms.append(s_NCHW.mean(dim=(-2, -1)))
    terms_LNC = torch.stack(terms, dim=0)
    # relu as in pytorch_msssim: a negative term would make a fractional power NaN. Where it
    # clips, relu's backward masks the infinite derivative of 0 ** w, so gradients stay finite.
    per_channel_NC = (torch.relu(terms_LNC) ** weights_L.view(-1, 1, 1)).prod(dim=0)
    return per_channel_NC.mean(dim=1)  # (N,)
