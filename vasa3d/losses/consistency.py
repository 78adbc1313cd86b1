"""VASA-3D's consistency losses, composed once for every fit that needs them.

- :func:`photometric_losses`: rendering consistency (robust L1, D-SSIM, silhouette, optional LPIPS);
- :func:`teacher_frame_weights`: down-weights teacher frames that do not show their own latent;
- expression consistency is :func:`vasa3d.losses.landmarks.landmark_reprojection` with
  :func:`vasa3d.losses.landmarks.landmark_weights`;
- geometry consistency is in :mod:`vasa3d.losses.geometry`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vasa3d.losses.rendering import Reduction, dssim, masked_l1, trimmed_l1

EYE_CORNERS = (33, 263)  # mediapipe's outer eye corners: the inter-ocular distance


def photometric_losses(
    render: Tensor,  # [B, 3, H, W]
    alpha: Tensor,  # [B, 1, H, W]
    target: Tensor,  # [B, 3, H, W] on the same background as the render
    mask: Tensor,  # [B, 1, H, W] the target's foreground
    region: Tensor | None = None,  # [B, 1, H, W] where to compare (None: everywhere)
    trim: float = 0.0,
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
    reduction: Reduction = "mean",
) -> dict[str, Tensor]:
    """``l1`` (trimmed by ``trim``), ``dssim``, ``silhouette`` (alpha vs mask) and, given an
    ``lpips(render, target) -> [B]`` function, ``lpips``; scalars, or ``[B]`` with ``reduction="frame"``."""
    losses = {
        "l1": trimmed_l1(render, target, region, trim, reduction),
        "dssim": dssim(render, target, region, reduction),
        "silhouette": masked_l1(alpha, mask, region, reduction),
    }
    if lpips is not None:
        per_frame = lpips(render, target).reshape(render.shape[0])
        losses["lpips"] = per_frame if reduction == "frame" else per_frame.mean()
    return losses


def inter_ocular(landmarks: Tensor) -> Tensor:
    """``[B]`` distance between the outer eye corners of mediapipe landmarks ``[B, 478, >=2]``."""
    return (landmarks[:, EYE_CORNERS[0], :2] - landmarks[:, EYE_CORNERS[1], :2]).norm(dim=-1)


def teacher_frame_weights(detected: Tensor, intended: Tensor, reference: Tensor, tolerance_iod: float) -> Tensor:
    """``[B]`` weights in (0, 1]: 1 where the landmarks detected on a teacher frame ``[B, 478, 2]`` agree
    with the ones its latent asked for (``intended``), falling as ``1 / (1 + (err / tolerance)^2)``
    where the teacher got the expression wrong. Errors are in inter-ocular distances of ``reference``."""
    if tolerance_iod <= 0:
        return torch.ones(detected.shape[0], dtype=detected.dtype, device=detected.device)
    err = (detected[..., :2] - intended[..., :2]).norm(dim=-1).mean(-1) / inter_ocular(reference).clamp(min=1e-6)
    return 1.0 / (1.0 + (err / tolerance_iod) ** 2)
