"""Complete what a portrait hides from what it shows: the colours of a head lifted from one photo.

A single photo sees each surface of the head at some angle, or not at all. Every Gaussian gets a
*seen* weight in [0, 1] (how squarely the portrait saw its triangle, inside the subject's matte), and
its colour becomes a blend of three sources:

- **observed**: the photo's colour, weighted by how well it was seen;
- **completed**: the colour of its mirror image across the head's symmetry plane (x = 0 in the
  template frame), where the mirror image was seen better (the far cheek, the hidden ear);
- **guessed**, where neither was seen, from a prior by region: the hair and back of the head from
  the visible hair (a distance-weighted average over many hair Gaussians, not a streak from the single
  nearest one), the ears and neck from the nearest skin the portrait saw, anything else from a
  smooth average of its seen neighbours.

Each Gaussian's *reliability* is the same blend of 1 (observed), :data:`COMPLETED` and :data:`GUESSED`:
the teacher renders it as a per-pixel weight for the fit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COMPLETED = 0.6  # reliability of a colour taken from the mirror image
GUESSED = 0.25  # reliability of a colour from a region prior
SKIN_EXCLUDED = ("lips", "mouth_interior", "left_eye", "right_eye", "left_brow", "right_brow")
FACE_MASK = ("face", "lips", "left_eye", "right_eye", "left_brow", "right_brow", "nose", "jaw")


def seen_weights(normals: Tensor, points: Tensor, inside: Tensor, viewmat: Tensor, lo: float = 0.15,
                 hi: float = 0.45) -> Tensor:
    """``[N]`` in [0, 1]: 0 where the surface (``normals [N, 3]`` at ``points [N, 3]``, world frame) faces
    away or grazes (cosine to the view ray below ``lo``), 1 from ``hi`` up, times ``inside [N]`` (in the matte)."""
    cam_points = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    facing = -((normals @ viewmat[:3, :3].T) * F.normalize(cam_points, dim=-1)).sum(-1)
    return ((facing - lo) / (hi - lo)).clamp(0, 1) * inside.float()


def visible_fraction(gaussians: dict[str, Tensor], viewmat: Tensor, K: Tensor, size: int, backend: str = "auto",
                     candidates: Tensor | None = None, full: float = 0.25) -> Tensor:
    """``[N]`` in [0, 1]: how much each Gaussian shows in the view ``viewmat``/``K`` (``size`` px): its total
    compositing weight over the image (from one backward pass: d sum(image) / d colour), relative to
    ``full`` times the median of ``candidates`` (the well-facing ones). Layers hidden behind others score
    near 0."""
    from vasa3d.gaussians.render import rasterize

    g = {k: v.detach() for k, v in gaussians.items()}
    probe = torch.zeros_like(g["colors"], requires_grad=True)
    with torch.enable_grad():
        out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], probe, viewmat[None], K[None], size,
                        size, backgrounds=torch.zeros(3), backend=backend)
        (weight,) = torch.autograd.grad(out.rgb[..., 0].sum(), probe)
    weight = weight[:, 0]
    pool = weight[candidates] if candidates is not None and candidates.any() else weight[weight > 0]
    reference = pool.median() if pool.numel() else weight.new_tensor(1.0)
    return (weight / (full * reference).clamp(min=1e-8)).clamp(0, 1)


def nearest(query: Tensor, points: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """``(distances [Q, k], indices [Q, k])`` of the ``k`` nearest ``points [P, 3]`` to each of ``query [Q, 3]``."""
    from scipy.spatial import cKDTree

    k = min(k, points.shape[0])
    distance, index = cKDTree(points.detach().cpu().double().numpy()).query(query.detach().cpu().double().numpy(), k=k)
    distance, index = distance.reshape(len(query), k), index.reshape(len(query), k)
    return (torch.from_numpy(distance).to(query.dtype).to(query.device),
            torch.from_numpy(index.astype("int64")).to(query.device))


def smooth_fill(query: Tensor, points: Tensor, values: Tensor, k: int) -> Tensor:
    """``[Q, C]``: inverse-distance-weighted mean of ``values [P, C]`` over the ``k`` nearest ``points``."""
    distance, index = nearest(query, points, k)
    weights = 1.0 / (distance + 1e-3)  # metres: 1 mm floor
    return (values[index] * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def buried(means: Tensor, normals: Tensor, surface: Tensor, candidates: Tensor, radius: float = 0.02,
           depth: float = 2e-3) -> tuple[Tensor, Tensor]:
    """``(mask [N], source [N])``: the Gaussians of ``candidates [N]`` that lie under ``surface [N]`` (within
    ``radius`` m of a surface Gaussian and more than ``depth`` m behind it along its normal; the template's skull
    shell runs behind the face mask), and the index of that surface Gaussian."""
    out = torch.zeros(means.shape[0], dtype=torch.bool, device=means.device)
    source = torch.arange(means.shape[0], device=means.device)
    others = torch.nonzero(candidates & ~surface).squeeze(-1)
    if others.numel() == 0 or not surface.any():
        return out, source
    surface_ids = torch.nonzero(surface).squeeze(-1)
    distance, index = nearest(means[others], means[surface_ids])
    host = surface_ids[index[:, 0]]
    behind = ((means[others] - means[host]) * normals[host]).sum(-1) < -depth
    hit = (distance[:, 0] < radius) & behind
    out[others[hit]] = True
    source[others[hit]] = host[hit]
    return out, source


def complete_colors(means: Tensor, colors: Tensor, seen: Tensor, region_of: dict[str, Tensor],
                    normals: Tensor | None = None, hair_k: int = 64, skin_k: int = 16, other_k: int = 8,
                    seen_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Complete the colours of a lifted head.

    Args:
        means: ``[N, 3]`` Gaussian centres in the template frame (symmetric about x = 0).
        colors: ``[N, 3]`` colours painted from the portrait (meaningful where ``seen`` > 0).
        seen: ``[N]`` seen weights from :func:`seen_weights`.
        region_of: template region name -> ``[N]`` bool (which Gaussians it binds): needs ``skull``,
            ``ears``, ``neck``, ``face`` and the names in :data:`SKIN_EXCLUDED` that exist.
        normals: ``[N, 3]`` outward normals of the Gaussians' triangles; given, the skull, ear and neck
            Gaussians buried under the face mask take the colour of the face above them (they show through
            its gaps at wide angles, as dark speckles when they carry the hair colour).
        hair_k, skin_k, other_k: neighbours averaged by the hair, skin and fallback priors.
        seen_threshold: a Gaussian with ``seen`` above it is a source for the priors.

    Returns:
        ``(colors [N, 3], reliability [N])``.
    """
    n = means.shape[0]
    mirrored = means * means.new_tensor([-1.0, 1.0, 1.0])
    _, partner = nearest(mirrored, means)
    partner = partner[:, 0]
    seen_mirror = seen[partner]
    false = torch.zeros(n, dtype=torch.bool, device=means.device)
    get = lambda name: region_of.get(name, false)  # noqa: E731

    sources = seen > seen_threshold
    prior = colors.clone()
    hair = get("skull")
    skin_parts = get("ears") | get("neck")
    skin = get("face")
    for name in SKIN_EXCLUDED:
        skin = skin & ~get(name)
    rules = [(hair, hair & sources, hair_k), (skin_parts & ~hair, (skin | skin_parts) & sources, skin_k)]
    covered = false.clone()
    for target, source, k in rules:
        target = target & ~covered
        if target.any() and source.any():
            prior[target] = smooth_fill(means[target], means[source], colors[source], k)
            covered |= target
    rest = ~covered
    if rest.any() and sources.any():
        prior[rest] = smooth_fill(means[rest], means[sources], colors[sources], other_k)

    w_own = seen
    w_mirror = (1 - seen) * seen_mirror
    w_prior = (1 - seen) * (1 - seen_mirror)
    out = w_own[:, None] * colors + w_mirror[:, None] * colors[partner] + w_prior[:, None] * prior
    reliability = w_own + COMPLETED * w_mirror + GUESSED * w_prior
    if normals is not None:
        mask = false.clone()
        for name in FACE_MASK:
            mask |= get(name)
        under, host = buried(means, normals, mask, hair | get("ears") | get("neck"))
        out[under], reliability[under] = out[host[under]], reliability[host[under]]
    return out, reliability


def complete_head_colors(head, vertices: Tensor, colors: Tensor, matte: Tensor, viewmat: Tensor, K: Tensor,
                         region_of: dict[str, Tensor], backend: str = "auto") -> tuple[Tensor, Tensor]:
    """:func:`complete_colors` for a :class:`~vasa3d.gaussians.head.GaussianHead` painted from one portrait.

    A Gaussian counts as seen by how squarely the portrait (``viewmat``, ``K``, ``matte [1, S, S]``) saw its
    triangle on ``vertices [V, 3]`` and by how much it shows in the portrait's view (hidden layers get no
    trusted colour). Returns ``(colors [N, 3], reliability [N])``.
    """
    from vasa3d.losses.landmarks import project_points

    g = head.world_gaussians(vertices)
    means = g["means"]
    if not torch.isfinite(means).all():  # a diverged head: nothing to complete (the fit's own check reports it)
        return colors, torch.ones(colors.shape[0], dtype=colors.dtype, device=colors.device)
    tri = vertices[head.faces[head.binding]]
    normals = F.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1), dim=-1)
    grid = (project_points(means, viewmat, K) / matte.shape[-1] * 2 - 1)[None, None]
    inside = F.grid_sample(matte[None], grid, align_corners=False)[0, 0, 0] > 0.5
    seen = seen_weights(normals, means, inside, viewmat)
    seen = seen * visible_fraction(g, viewmat, K, matte.shape[-1], backend, candidates=seen > 0.5)
    return complete_colors(means, colors, seen, region_of, normals)
