"""Photometric losses between renders and target images (channels first, ``[B, C, H, W]`` in [0, 1]).

``reduction="mean"`` gives one scalar over the batch, ``"frame"`` one value per frame ``[B]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "frame"]


def _reduce(loss_map: Tensor, weight: Tensor | None, reduction: Reduction) -> Tensor:
    dims = (1, 2, 3) if reduction == "frame" else (0, 1, 2, 3)
    if weight is None:
        return loss_map.mean(dim=dims)
    weight = weight.expand(loss_map.shape[0], 1, *loss_map.shape[2:])
    return (loss_map * weight).sum(dim=dims) / (weight.sum(dim=dims) * loss_map.shape[1]).clamp(min=1e-8)


def masked_l1(render: Tensor, target: Tensor, weight: Tensor | None = None, reduction: Reduction = "mean") -> Tensor:
    """Mean absolute error, optionally weighted per pixel by ``weight [B, 1, H, W]``."""
    return _reduce((render - target).abs(), weight, reduction)


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim_map(render: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, backend: str = "auto") -> Tensor:
    """Per-pixel SSIM ``[B, C, H - window + 1, W - window + 1]`` (data range 1, K1 0.01, K2 0.03).

    The same numbers as torchmetrics' ``structural_similarity_index_measure(..., return_full_image=True)``
    without its padding, computed with a separable Gaussian (two 11-tap passes instead of one
    11x11 one): about five times cheaper, which matters when it runs every training step.

    ``backend="auto"``: on the CPU, when the compiled kernels are built and only ``render`` needs a
    gradient, one compiled pass per image plane with a hand-written backward (``csrc/ssim.cpp``; forward and
    backward 3-5 times faster than the convolutions under autograd, ``benchmarks/train_step.py``);
    ``"torch"``: the reference, by depthwise convolutions.
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"ssim_map: backend={backend!r}: use 'auto' or 'torch'")
    g = _gaussian_window(window, sigma, render)
    if backend == "auto" and _compiled_ssim(render, target):
        from vasa3d.gaussians.composite_cpp import ssim_map_cpp

        return ssim_map_cpp(render, target, g)
    channels = render.shape[1]
    stack = torch.cat([render, target, render * render, target * target, render * target], dim=1)
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(5 * channels, 1, 1, window), groups=5 * channels)
    stack = F.conv2d(stack, g.view(1, 1, -1, 1).expand(5 * channels, 1, window, 1), groups=5 * channels)
    mu_x, mu_y, xx, yy, xy = stack.split(channels, dim=1)
    c1, c2 = 0.01**2, 0.03**2
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def _compiled_ssim(render: Tensor, target: Tensor) -> bool:
    """Whether :func:`ssim_map` can take the compiled path: CPU float32/64 images of one size and dtype, no
    gradient wanted for the target, the kernels built."""
    if render.dim() != 4 or target.shape != render.shape or (target.requires_grad and torch.is_grad_enabled()):
        return False
    from vasa3d.gaussians.composite_cpp import cpu_ready

    return cpu_ready(render, target)


def dssim(render: Tensor, target: Tensor, weight: Tensor | None = None, reduction: Reduction = "mean",
          backend: str = "auto") -> Tensor:
    """Structural dissimilarity ``(1 - SSIM) / 2`` (11 px Gaussian window, sigma 1.5), optionally weighted
    (over the valid, unpadded pixels: ``weight`` is cropped by the window's half width); ``backend`` as
    in :func:`ssim_map`."""
    loss_map = (1.0 - ssim_map(render, target, backend=backend)) / 2.0
    if weight is not None:
        pad = (weight.shape[-1] - loss_map.shape[-1]) // 2
        weight = weight[..., pad:weight.shape[-2] - pad, pad:weight.shape[-1] - pad]
    return _reduce(loss_map, weight, reduction)


def trimmed_l1(render: Tensor, target: Tensor, weight: Tensor | None = None, trim: float = 0.0,
               reduction: Reduction = "mean") -> Tensor:
    """L1 that ignores, per frame, the ``trim`` fraction of pixels with the largest error.

    A robust loss against teacher artifacts (RobustNeRF's trimmed estimator): a smear or a
    wrong tooth in a teacher frame is a minority of pixels with large residuals, and they get
    no gradient, while the consistent majority still fits. ``trim=0`` is plain (masked) L1.
    """
    err = (render - target).abs()
    if trim <= 0:
        return _reduce(err, weight, reduction)
    per_pixel = err.mean(dim=1, keepdim=True).detach()
    if weight is not None:
        per_pixel = per_pixel.masked_fill(weight.expand_as(per_pixel) <= 0, float("nan"))
    threshold = torch.nanquantile(per_pixel.flatten(1), 1.0 - trim, dim=1)  # [B]
    inlier = (per_pixel <= threshold[:, None, None, None]).to(err.dtype)
    return _reduce(err, inlier if weight is None else inlier * weight, reduction)
