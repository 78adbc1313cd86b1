"""Photometric losses between renders and target images (channels first, ``[B, 3, H, W]`` in [0, 1])."""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure


def masked_l1(render: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute error, optionally weighted per pixel by ``weight [B, 1, H, W]``."""
    err = (render - target).abs()
    if weight is None:
        return err.mean()
    return (err * weight).sum() / (weight.sum() * render.shape[1]).clamp(min=1e-8)


def dssim(render: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Structural dissimilarity ``(1 - SSIM) / 2`` (11 px Gaussian window, sigma 1.5), optionally weighted."""
    _, ssim_map = structural_similarity_index_measure(
        render, target, data_range=1.0, return_full_image=True, reduction="none")
    loss_map = (1.0 - ssim_map) / 2.0
    if weight is None:
        return loss_map.mean()
    return (loss_map * weight).sum() / (weight.sum() * render.shape[1]).clamp(min=1e-8)

