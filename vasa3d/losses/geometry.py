"""Regularisers that keep the Gaussian head a plausible surface where no image constrains it."""

from __future__ import annotations

import torch
from torch import Tensor

from vasa3d.gaussians.binding import take


def mesh_edges(faces: Tensor) -> Tensor:
    """Unique undirected edges ``[E, 2]`` of a triangle mesh ``faces [F, 3]``."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(edges, dim=0)


def laplacian_smoothness(offsets: Tensor, edges: Tensor) -> Tensor:
    """Mean squared difference of per-vertex ``offsets [V, 3]`` across ``edges [E, 2]``."""
    return (take(offsets, edges[:, 0]) - take(offsets, edges[:, 1])).pow(2).sum(-1).mean()


def scale_regularizer(world_scales: Tensor, max_scale: float) -> Tensor:
    """Penalise Gaussians larger than ``max_scale`` (world units) on any axis; ``world_scales [N, 3]``."""
    return torch.relu(world_scales - max_scale).pow(2).sum(-1).mean() / max_scale**2


def binding_regularizer(local_means: Tensor, max_distance: float = 1.0) -> Tensor:
    """Keep Gaussians within ``max_distance`` triangle-scales of their parent triangle; ``local_means [N, 3]``."""
    return torch.relu(local_means.norm(dim=-1) - max_distance).pow(2).mean()


def neighbour_color_smoothness(colors: Tensor, binding: Tensor, face_adjacency: Tensor, n_faces: int) -> Tensor:
    """Pull each Gaussian's colour towards the mean colour of its triangle's neighbours (detached).

    Colour diffuses from regions the images constrain into regions they never show (the
    back of the head), instead of staying at its initial value there.
    ``colors [N, 3]`` activated, ``binding [N]``, ``face_adjacency [A, 2]`` pairs of adjacent faces.
    """
    with torch.no_grad():
        face_sum = torch.zeros(n_faces, 3, dtype=colors.dtype, device=colors.device).index_add_(0, binding, colors)
        face_count = torch.zeros(n_faces, dtype=colors.dtype, device=colors.device).index_add_(
            0, binding, torch.ones_like(colors[:, 0]))
        nb_sum = torch.zeros_like(face_sum).index_add_(0, face_adjacency[:, 0], face_sum[face_adjacency[:, 1]])
        nb_count = torch.zeros_like(face_count).index_add_(0, face_adjacency[:, 0], face_count[face_adjacency[:, 1]])
        target = nb_sum / nb_count.clamp(min=1)[:, None]
        has_neighbours = nb_count[binding] > 0
    return ((colors - target[binding]).pow(2).sum(-1) * has_neighbours).mean()


def face_adjacency(faces: Tensor) -> Tensor:
    """Pairs ``[A, 2]`` (both directions) of faces sharing an edge."""
    n = faces.shape[0]
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    owner = torch.arange(n, device=faces.device).repeat(3)
    _, inverse = torch.unique(edges, dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    inv_sorted, owner_sorted = inverse[order], owner[order]
    same = inv_sorted[1:] == inv_sorted[:-1]
    a, b = owner_sorted[:-1][same], owner_sorted[1:][same]
    return torch.cat([torch.stack([a, b], -1), torch.stack([b, a], -1)])
