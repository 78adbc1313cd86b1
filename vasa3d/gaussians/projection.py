"""Projection of 3D Gaussians to the image plane, in plain differentiable torch.

Conventions follow gsplat 1.5 (``gsplat.cuda._torch_impl._fully_fused_projection``)
so that the CPU and CUDA backends of :func:`vasa3d.gaussians.render.rasterize`
agree: world-to-camera ``viewmats`` (OpenCV axes: x right, y down, z forward),
pinhole ``Ks`` in pixels, EWA splatting with the perspective Jacobian evaluated at
a mean clamped to 1.3x the field of view, ``eps2d`` added to the 2D covariance
(the 0.3 px low-pass), and a per-axis radius of ``ceil(3.33 * sigma)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Projection(NamedTuple):
    """Gaussians projected into C cameras."""

    means2d: Tensor  # [C, N, 2] pixel coordinates (pixel centres at +0.5)
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    depths: Tensor  # [C, N] camera-space z
    radii: Tensor  # [C, N, 2] int32 per-axis radius in px; 0 = culled
    compensations: Tensor  # [C, N] sqrt(det(cov2d) / det(cov2d + eps2d)), for antialiasing


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from quaternions ``[..., 4]`` in (w, x, y, z) order; normalises first."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return rot.reshape(quats.shape[:-1] + (3, 3))


def rotmat_to_quat(rotmats: Tensor) -> Tensor:
    """Quaternions (w, x, y, z), ``[..., 4]``, from rotation matrices ``[..., 3, 3]``."""
    m = rotmats
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
        ],
        dim=-2,
    )  # [..., 4, 4]; row k is 4 * q_k * q, the best-conditioned row has the largest norm
    best = candidates.norm(dim=-1).argmax(dim=-1, keepdim=True)
    quat = torch.gather(candidates, -2, best[..., None].expand(*best.shape, 4)).squeeze(-2)
    quat = F.normalize(quat, dim=-1)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def covariance_from_quat_scale(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance ``R S S^T R^T`` ``[..., 3, 3]`` from quats ``[..., 4]`` and scales ``[..., 3]``."""
    rs = quat_to_rotmat(quats) * scales[..., None, :]
    return rs @ rs.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N, 3] world
    covars: Tensor,  # [N, 3, 3] world
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> Projection:
    """Project N Gaussians into C pinhole cameras (EWA), gsplat conventions.

    Gaussians behind ``near_plane``, beyond ``far_plane``, entirely off-screen or
    with a radius at most ``radius_clip`` px get ``radii == 0``.
    """
    rot = viewmats[:, None, :3, :3]  # [C, 1, 3, 3]
    means_c = (rot @ means[None, :, :, None]).squeeze(-1) + viewmats[:, None, :3, 3]  # [C, N, 3]
    covars_c = rot @ covars[None] @ rot.transpose(-1, -2)  # [C, N, 3, 3]

    tx, ty, tz = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    # The Jacobian is evaluated at a mean clamped to 1.3x the frustum, as gsplat does,
    # so that Gaussians far off-screen do not get huge footprints.
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx_c = tz * torch.maximum(torch.minimum(tx / tz, lim_x_pos), -lim_x_neg)
    ty_c = tz * torch.maximum(torch.minimum(ty / tz, lim_y_pos), -lim_y_neg)
    zeros = torch.zeros_like(tz)
    jac = torch.stack(
        [fx / tz, zeros, -fx * tx_c / tz**2, zeros, fy / tz, -fy * ty_c / tz**2], dim=-1
    ).reshape(tz.shape + (2, 3))
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)

    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    det = (cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]).clamp(min=1e-10)
    compensations = torch.sqrt(torch.clamp(det_orig / det, min=0.0))
    conics = torch.stack(
        [cov2d[..., 1, 1] / det, -0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]) / det, cov2d[..., 0, 0] / det],
        dim=-1,
    )

    with torch.no_grad():
        radii = torch.ceil(3.33 * torch.sqrt(torch.stack([cov2d[..., 0, 0], cov2d[..., 1, 1]], dim=-1)))
        valid = (det > 0) & (tz > near_plane) & (tz < far_plane)
        valid &= radii.amax(dim=-1) > radius_clip
        inside = (
            (means2d[..., 0] + radii[..., 0] > 0)
            & (means2d[..., 0] - radii[..., 0] < width)
            & (means2d[..., 1] + radii[..., 1] > 0)
            & (means2d[..., 1] - radii[..., 1] < height)
        )
        radii = torch.where((valid & inside)[..., None], radii, torch.zeros_like(radii))
        radii = torch.nan_to_num(radii, nan=0.0).int()
    return Projection(means2d, conics, tz, radii, compensations)
