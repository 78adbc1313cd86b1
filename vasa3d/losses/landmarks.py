"""Landmark losses: projected mesh landmarks against detected ones."""

from __future__ import annotations

import torch
from torch import Tensor


def project_points(points: Tensor, viewmat: Tensor, K: Tensor) -> Tensor:
    """Pixel coordinates ``[..., P, 2]`` of world ``points [..., P, 3]`` in a pinhole camera.

    ``viewmat [..., 4, 4]`` world-to-camera (OpenCV axes), ``K [..., 3, 3]``.
    """
    cam = points @ viewmat[..., :3, :3].transpose(-1, -2) + viewmat[..., None, :3, 3]
    pix = cam @ K.transpose(-1, -2)
    return pix[..., :2] / pix[..., 2:3].clamp(min=1e-6)


def landmark_reprojection(
    points: Tensor,  # [B, P, 3] world
    target_px: Tensor,  # [B, P, 2]
    viewmat: Tensor,  # [B, 4, 4]
    K: Tensor,  # [B, 3, 3]
    image_size: int,
    weights: Tensor | None = None,  # [P]
) -> Tensor:
    """Mean (weighted) pixel distance between projected points and targets, in units of ``image_size``."""
    dist = (project_points(points, viewmat, K) - target_px).norm(dim=-1) / image_size
    if weights is None:
        return dist.mean()
    return (dist * weights).sum(-1).mean() / weights.sum()


def _contour_ids(*connections) -> list[int]:
    return sorted({i for conn in connections for edge in conn for i in edge})


def landmark_weights(w_lips: float = 1.0, w_eyes: float = 1.0) -> Tensor:
    """``[478]`` per-landmark weights of mediapipe's topology: lips ``w_lips``, eyelids and irises ``w_eyes``, others 1."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    weights = torch.ones(478)
    weights[_contour_ids(fmc.FACEMESH_LIPS)] = w_lips
    weights[_contour_ids(fmc.FACEMESH_LEFT_EYE, fmc.FACEMESH_RIGHT_EYE)] = w_eyes
    weights[468:] = w_eyes
    return weights
