"""A dense, obviously correct compositor: every pixel against every Gaussian, in depth order.

Used only by tests to check the tiled torch and compiled C++ compositors.
"""

import torch

from vasa3d.gaussians.composite import ALPHA_MAX, ALPHA_MIN, T_MIN
from vasa3d.gaussians.projection import quat_to_rotmat


def composite_dense(means2d, conics, opacities, colors, radii, depths, width, height):
    """Returns ``colors [H, W, K]`` and ``alphas [H, W, 1]``; loops over Gaussians, never tiles."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means2d.dtype), torch.arange(width, dtype=means2d.dtype),
                            indexing="ij")
    px, py = xs + 0.5, ys + 0.5
    out = torch.zeros(height, width, colors.shape[-1], dtype=means2d.dtype)
    trans = torch.ones(height, width, dtype=means2d.dtype)
    done = torch.zeros(height, width, dtype=torch.bool)
    visible = (radii > 0).all(-1)
    for g in torch.argsort(depths, stable=True).tolist():
        if not visible[g]:
            continue
        dx, dy = px - means2d[g, 0], py - means2d[g, 1]
        a, b, c = conics[g]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp_max(opacities[g] * torch.exp(-sigma), ALPHA_MAX)
        use = (sigma >= 0) & (alpha >= ALPHA_MIN) & ~done
        next_trans = trans * (1 - alpha)
        stop = use & (next_trans <= T_MIN)
        done = done | stop
        use = use & ~stop
        weight = torch.where(use, alpha * trans, torch.zeros_like(alpha))
        out = out + weight[..., None] * colors[g]
        trans = torch.where(use, next_trans, trans)
    return out, (1 - trans)[..., None]


def random_scene(n, width, height, seed=0, dtype=torch.float32, sigma_px=(1.0, 4.0)):
    """Random projected Gaussians covering the image: means2d, conics, opacities, colors, radii, depths."""
    gen = torch.Generator().manual_seed(seed)
    means2d = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([width, height], dtype=dtype)
    sx = sigma_px[0] + (sigma_px[1] - sigma_px[0]) * torch.rand(n, generator=gen, dtype=dtype)
    sy = sigma_px[0] + (sigma_px[1] - sigma_px[0]) * torch.rand(n, generator=gen, dtype=dtype)
    theta = torch.rand(n, generator=gen, dtype=dtype) * 3.1416
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([cos, -sin, sin, cos], -1).reshape(n, 2, 2)
    cov = rot @ torch.diag_embed(torch.stack([sx * sx, sy * sy], -1)) @ rot.transpose(-1, -2)
    cov = cov + 0.3 * torch.eye(2, dtype=dtype)
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    conics = torch.stack([cov[:, 1, 1] / det, -cov[:, 0, 1] / det, cov[:, 0, 0] / det], -1)
    radii = torch.ceil(3.33 * torch.sqrt(torch.stack([cov[:, 0, 0], cov[:, 1, 1]], -1))).int()
    opacities = 0.05 + 0.9 * torch.rand(n, generator=gen, dtype=dtype)
    colors = torch.rand(n, 4, generator=gen, dtype=dtype)
    depths = 1 + torch.rand(n, generator=gen, dtype=dtype)
    return means2d, conics, opacities, colors, radii, depths


def random_scene3d(n=300, seed=0, dtype=torch.float32):
    """A random 3D scene and two cameras (one turned): means, quats, scales, opacities, colors, viewmats, Ks."""
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen, dtype=dtype) - 0.5) * torch.tensor([1.2, 1.2, 1.0], dtype=dtype)
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    scales = 0.01 + 0.04 * torch.rand(n, 3, generator=gen, dtype=dtype)
    opacities = 0.1 + 0.8 * torch.rand(n, generator=gen, dtype=dtype)
    colors = torch.rand(n, 3, generator=gen, dtype=dtype)
    viewmats = torch.eye(4, dtype=dtype).repeat(2, 1, 1)
    viewmats[:, 2, 3] = 2.5
    viewmats[1, :3, :3] = quat_to_rotmat(torch.tensor([0.96, 0.0, 0.28, 0.0], dtype=dtype))
    Ks = torch.tensor([[80.0, 0, 32], [0, 80.0, 24], [0, 0, 1]], dtype=dtype).repeat(2, 1, 1)
    return means, quats, scales, opacities, colors, viewmats, Ks
