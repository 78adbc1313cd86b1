"""Tile binning and front-to-back alpha compositing of projected 2D Gaussians on the CPU.

Two compositors share one binning and one set of rules (gsplat 1.5's kernel):
pixel centres at ``(x + 0.5, y + 0.5)``; ``alpha = min(0.999, opacity * exp(-sigma))``;
a Gaussian is skipped where ``sigma < 0`` or ``alpha < 1/255``; a pixel stops, without
the Gaussian that would do it, once its transmittance would fall to ``1e-4`` or below.

- :func:`composite_torch`: tiled, vectorised pure torch with autograd; the reference.
- :mod:`vasa3d.gaussians.composite_cpp`: the same in compiled C++ with a hand-written
  backward; the fast path, tested against this one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4


class TileBins(NamedTuple):
    """Gaussian lists per tile, each list sorted front to back."""

    tile_offsets: Tensor  # [n_tiles + 1] int64: tile t owns flat_ids[offsets[t]:offsets[t+1]]
    flat_ids: Tensor  # [M] int64 Gaussian indices
    tiles_x: int
    tiles_y: int
    tile_size: int


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor,  # [N, 2]
    radii: Tensor,  # [N, 2] int, 0 = culled
    depths: Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int = 16,
) -> TileBins:
    """Assign each visible Gaussian to the tiles its ``radii`` box touches, sorted by depth."""
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = tiles_x * tiles_y
    device = means2d.device
    visible = (radii > 0).all(dim=-1)
    ids = torch.nonzero(visible).squeeze(-1)
    if ids.numel() == 0:
        return TileBins(torch.zeros(n_tiles + 1, dtype=torch.int64, device=device),
                        torch.zeros(0, dtype=torch.int64, device=device), tiles_x, tiles_y, tile_size)
    centre = means2d[ids].float() / tile_size
    extent = radii[ids].float() / tile_size
    lo = torch.floor(centre - extent).long()
    hi = torch.ceil(centre + extent).long()
    lo[:, 0].clamp_(0, tiles_x), hi[:, 0].clamp_(0, tiles_x)
    lo[:, 1].clamp_(0, tiles_y), hi[:, 1].clamp_(0, tiles_y)
    span = (hi - lo).clamp(min=0)
    counts = span[:, 0] * span[:, 1]
    keep = counts > 0
    ids, lo, span, counts = ids[keep], lo[keep], span[keep], counts[keep]
    # Front-to-back rank of each Gaussian, so that a single sort by (tile, rank) orders every tile.
    rank = torch.empty_like(ids)
    rank[torch.argsort(depths[ids], stable=True)] = torch.arange(ids.numel(), device=device)
    owner = torch.repeat_interleave(torch.arange(ids.numel(), device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(owner.numel(), device=device) - first[owner]
    tx = lo[owner, 0] + local % span[owner, 0]
    ty = lo[owner, 1] + local // span[owner, 0]
    tile_ids = ty * tiles_x + tx
    order = torch.argsort(tile_ids * ids.numel() + rank[owner])
    flat_ids = ids[owner[order]]
    per_tile = torch.bincount(tile_ids, minlength=n_tiles)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(per_tile, 0)
    return TileBins(offsets, flat_ids, tiles_x, tiles_y, tile_size)


def composite_torch(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N] activated, in [0, 1]
    colors: Tensor,  # [N, K] any number of channels
    bins: TileBins,
    width: int,
    height: int,
    max_elements: int = 1 << 23,
) -> tuple[Tensor, Tensor]:
    """Composite front to back with autograd; returns ``colors [H, W, K]`` and ``alphas [H, W, 1]``.

    Tiles are processed in chunks, each padded to its longest Gaussian list, with at
    most ``max_elements`` (tile pixels x list length) in flight, which bounds memory.
    """
    ts = bins.tile_size
    n_tiles = bins.tiles_x * bins.tiles_y
    channels = colors.shape[-1]
    dtype, device = means2d.dtype, means2d.device
    out_colors = means2d.new_zeros(n_tiles, ts * ts, channels)
    out_alphas = means2d.new_zeros(n_tiles, ts * ts)
    lengths = bins.tile_offsets[1:] - bins.tile_offsets[:-1]
    local = torch.arange(ts * ts, device=device)
    pix_local = torch.stack([local % ts, local // ts], dim=-1).to(dtype) + 0.5  # [P, 2]

    busy = torch.nonzero(lengths > 0).squeeze(-1)
    busy = busy[torch.argsort(lengths[busy], descending=True)]  # similar lengths share a chunk
    start = 0
    while start < busy.numel():
        longest = int(lengths[busy[start]])
        n_chunk = max(1, min(busy.numel() - start, max_elements // (ts * ts * longest)))
        tiles = busy[start:start + n_chunk]
        start += n_chunk
        slot = torch.arange(longest, device=device)
        in_list = slot[None, :] < lengths[tiles, None]  # [n, L]
        gid = bins.flat_ids[(bins.tile_offsets[tiles, None] + slot).clamp(max=bins.flat_ids.numel() - 1)]
        origin = torch.stack([tiles % bins.tiles_x, tiles // bins.tiles_x], dim=-1).to(dtype) * ts
        pixels = origin[:, None, :] + pix_local[None]  # [n, P, 2]
        delta = pixels[:, :, None, :] - means2d[gid][:, None, :, :]  # [n, P, L, 2]
        conic = conics[gid][:, None]  # [n, 1, L, 3]
        sigma = 0.5 * (conic[..., 0] * delta[..., 0] ** 2 + conic[..., 2] * delta[..., 1] ** 2) \
            + conic[..., 1] * delta[..., 0] * delta[..., 1]
        alpha = torch.clamp_max(opacities[gid][:, None] * torch.exp(-sigma), ALPHA_MAX)
        used = (sigma >= 0) & (alpha >= ALPHA_MIN) & in_list[:, None]
        alpha = torch.where(used, alpha, torch.zeros_like(alpha))
        # Transmittance only falls, so "still above T_MIN after this one" marks a prefix.
        alive = torch.cumprod(1 - alpha, dim=-1).detach() > T_MIN
        alpha = alpha * alive
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
        weights = alpha * trans  # [n, P, L]
        out_colors = out_colors.index_copy(0, tiles, torch.einsum("npl,nlk->npk", weights, colors[gid]))
        out_alphas = out_alphas.index_copy(0, tiles, weights.sum(-1))

    return _untile(out_colors, bins, width, height), _untile(out_alphas[..., None], bins, width, height)


def _untile(per_tile: Tensor, bins: TileBins, width: int, height: int) -> Tensor:
    """``[n_tiles, ts*ts, K]`` -> ``[H, W, K]``."""
    ts, k = bins.tile_size, per_tile.shape[-1]
    image = per_tile.reshape(bins.tiles_y, bins.tiles_x, ts, ts, k).permute(0, 2, 1, 3, 4)
    return image.reshape(bins.tiles_y * ts, bins.tiles_x * ts, k)[:height, :width]
