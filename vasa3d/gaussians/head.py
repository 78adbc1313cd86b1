"""The Gaussian head: Gaussians bound to the triangles of a (deformable) head mesh.

Parameters are stored as gsplat's strategies expect (``means``, ``scales`` in log,
``quats``, ``opacities`` in logit, ``colors`` in logit, one tensor per name, leading
dimension N), with ``binding`` (parent triangle ids) carried along as a non-trainable
entry so that densification duplicates, splits and prunes it with the rest. Means and
scales are in the parent triangle's local units (see :mod:`vasa3d.gaussians.binding`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasa3d.gaussians.binding import bind_to_world, triangle_frames, world_to_local_points
from vasa3d.gaussians.render import Backend, RenderOutput, rasterize

SH_C0 = 0.28209479177387814  # zeroth spherical-harmonic basis; .ply stores colour as sh0


class GaussianHead(nn.Module):
    """Gaussians riding a head mesh, with a learnable identity offset per mesh vertex.

    Args:
        template_vertices: ``[V, 3]`` neutral template vertices (template frame, metres).
        faces: ``[F, 3]`` triangles.
        num_gaussians: Gaussians to start with (at least one per triangle).
        init_opacity: starting opacity of every Gaussian.
        init_scale: starting in-plane size as a fraction of the mean spacing of Gaussians.
        seed: seed for the initial placement.
        feature_dim: size of a learnt per-Gaussian feature (``splats["features"]``, the residual
            MLP's input, densified with the rest); 0 for none.
    """

    def __init__(
        self,
        template_vertices: Tensor,
        faces: Tensor,
        num_gaussians: int = 20000,
        init_opacity: float = 0.9,
        init_scale: float = 0.8,
        seed: int = 0,
        feature_dim: int = 0,
    ) -> None:
        super().__init__()
        template_vertices = torch.tensor(template_vertices, dtype=torch.float32)
        faces = torch.tensor(faces, dtype=torch.int64)
        self.register_buffer("template_vertices", template_vertices)
        self.register_buffer("faces", faces)
        self.shape_offsets = nn.Parameter(torch.zeros_like(template_vertices))
        splats = self._initial_splats(num_gaussians, init_opacity, init_scale, seed)
        if feature_dim > 0:
            gen = torch.Generator().manual_seed(seed + 1)
            splats["features"] = nn.Parameter(0.1 * torch.randn(splats["means"].shape[0], feature_dim, generator=gen))
        self.splats = nn.ParameterDict(splats)

    def _initial_splats(self, count: int, opacity: float, scale: float, seed: int) -> dict[str, nn.Parameter]:
        gen = torch.Generator().manual_seed(seed)
        frames = triangle_frames(self.template_vertices, self.faces)
        v = self.template_vertices[self.faces]  # [F, 3, 3]
        areas = 0.5 * torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=-1)
        n_faces = self.faces.shape[0]
        extra = max(count - n_faces, 0)
        binding = torch.arange(n_faces)
        if extra > 0:
            binding = torch.cat([binding, torch.multinomial(areas, extra, replacement=True, generator=gen)])
        bary = torch.rand(binding.numel(), 2, generator=gen)
        flip = bary.sum(-1) > 1
        bary[flip] = 1 - bary[flip]
        tri = v[binding]
        points = tri[:, 0] + bary[:, :1] * (tri[:, 1] - tri[:, 0]) + bary[:, 1:] * (tri[:, 2] - tri[:, 0])
        local_means = world_to_local_points(points, binding, frames)
        spacing = math.sqrt(float(areas.sum()) / binding.numel())
        k = frames.scales[binding, None]
        world_scales = torch.tensor([scale * spacing, scale * spacing, 0.3 * scale * spacing])
        quats = torch.zeros(binding.numel(), 4)
        quats[:, 0] = 1.0
        return {
            "means": nn.Parameter(local_means),
            "quats": nn.Parameter(quats),
            "scales": nn.Parameter(torch.log(world_scales / k)),
            "opacities": nn.Parameter(torch.full((binding.numel(),), math.log(opacity / (1 - opacity)))),
            "colors": nn.Parameter(torch.zeros(binding.numel(), 3)),
            "binding": nn.Parameter(binding, requires_grad=False),
        }

    @property
    def num_gaussians(self) -> int:
        """Current number of Gaussians."""
        return self.splats["means"].shape[0]

    @property
    def binding(self) -> Tensor:
        """``[N]`` parent triangle of each Gaussian."""
        return self.splats["binding"]

    def vertices(self, deformation: Tensor | None = None) -> Tensor:
        """Mesh vertices ``[V, 3]``: template + identity offsets (+ an optional per-frame deformation)."""
        verts = self.template_vertices + self.shape_offsets
        return verts if deformation is None else verts + deformation

    def world_gaussians(self, vertices: Tensor | None = None) -> dict[str, Tensor]:
        """Activated world-space Gaussians on ``vertices`` (default: the identity-shaped template)."""
        verts = self.vertices() if vertices is None else vertices
        frames = triangle_frames(verts, self.faces)
        means, quats, scales = bind_to_world(
            self.splats["means"], self.splats["quats"], torch.exp(self.splats["scales"]), self.binding, frames)
        return {
            "means": means,
            "quats": quats,
            "scales": scales,
            "opacities": torch.sigmoid(self.splats["opacities"]),
            "colors": torch.sigmoid(self.splats["colors"]),
        }

    def render(
        self,
        viewmats: Tensor,  # [C, 4, 4]
        Ks: Tensor,  # [C, 3, 3]
        width: int,
        height: int,
        vertices: Tensor | None = None,
        background: Tensor | None = None,  # [3] or [C, 3]
        backend: Backend = "auto",
    ) -> RenderOutput:
        """Render the head into C cameras (channels last, see :func:`rasterize`)."""
        g = self.world_gaussians(vertices)
        return rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                         width, height, backgrounds=background, backend=backend)

    @torch.no_grad()
    def set_colors(self, rgb: Tensor, mask: Tensor | None = None) -> None:
        """Set the activated colours ``[N, 3]`` in [0, 1] (where ``mask [N]`` is true)."""
        logits = torch.logit(rgb.clamp(0.02, 0.98))
        if mask is None:
            self.splats["colors"].copy_(logits)
        else:
            self.splats["colors"][mask] = logits[mask]

    @torch.no_grad()
    def paint_from_image(
        self,
        image: Tensor,  # [3, H, W] in [0, 1]
        mask: Tensor,  # [1, H, W] where the image shows the head
        viewmat: Tensor,  # [4, 4]
        K: Tensor,  # [3, 3]
        vertices: Tensor | None = None,  # [V, 3]
        min_facing: float = 0.3,
    ) -> Tensor:
        """Colour each Gaussian from ``image`` where its triangle faces the camera and ``mask`` is set;
        every other Gaussian takes the colour of its nearest painted one. Returns the painted ``[N]`` mask."""
        g = self.world_gaussians(vertices)
        verts = self.vertices() if vertices is None else vertices
        cam_points = g["means"] @ viewmat[:3, :3].T + viewmat[:3, 3]
        pix = cam_points @ K.T
        pix = pix[:, :2] / pix[:, 2:3].clamp(min=1e-6)
        tri = verts[self.faces[self.binding]]
        normals = F.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1), dim=-1)
        facing = ((normals @ viewmat[:3, :3].T) * F.normalize(cam_points, dim=-1)).sum(-1) < -min_facing
        size = torch.tensor([image.shape[-1], image.shape[-2]], dtype=pix.dtype, device=pix.device)
        grid = (pix / size * 2 - 1)[None, None]  # [1, 1, N, 2] in [-1, 1]
        rgb = F.grid_sample(image[None], grid, align_corners=False)[0, :, 0].T
        inside = F.grid_sample(mask[None], grid, align_corners=False)[0, 0, 0] > 0.5
        painted = facing & inside
        if painted.any():
            nearest = torch.cat([torch.cdist(chunk, g["means"][painted]).argmin(dim=1)
                                 for chunk in g["means"].split(4096)])
            self.set_colors(torch.where(painted[:, None], rgb, rgb[painted][nearest]))
        return painted

    def resize_to(self, state_dict: dict[str, Tensor], prefix: str = "") -> None:
        """Give the splat tensors the sizes found in ``state_dict`` (before loading a densified checkpoint)."""
        for name in list(self.splats.keys()):
            saved = state_dict.get(f"{prefix}splats.{name}")
            if saved is not None and saved.shape != self.splats[name].shape:
                self.splats[name] = nn.Parameter(torch.zeros_like(saved), requires_grad=self.splats[name].requires_grad)

    @torch.no_grad()
    def export_ply(self, path: str | Path, vertices: Tensor | None = None,
                   orientation: Literal["y_down", "y_up"] = "y_down") -> Path:
        """Write the standard 3DGS ``.ply`` (metres, head centre at the origin).

        ``orientation``: ``y_down`` (default) is the 3DGS/COLMAP convention that splat viewers assume
        (SuperSplat, antimatter15/splat, gaussian-splats-3d): +y down, the face towards -z, so the head
        opens upright. ``y_up`` keeps the template frame (+y up, +z out of the face; three.js style).
        """
        from gsplat import export_splats

        if orientation not in ("y_down", "y_up"):
            raise ValueError(f"orientation={orientation!r}: use 'y_down' (3DGS/COLMAP viewers) or 'y_up'")
        g = self.world_gaussians(vertices)
        means, quats = g["means"].float().cpu(), F.normalize(g["quats"].float().cpu(), dim=-1)
        if orientation == "y_down":  # a half turn about x: (x, y, z) -> (x, -y, -z); q -> (0, 1, 0, 0) * q
            means = means * torch.tensor([1.0, -1.0, -1.0])
            w, x, y, z = quats.unbind(-1)
            quats = torch.stack([-x, w, -z, y], dim=-1)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n = self.num_gaussians
        export_splats(
            means=means,
            scales=torch.log(g["scales"]).float().cpu(),
            quats=quats,
            opacities=self.splats["opacities"].float().cpu(),
            sh0=((g["colors"] - 0.5) / SH_C0).float().cpu()[:, None, :],
            shN=torch.zeros(n, 0, 3),
            format="ply",
            save_to=str(path),
        )
        return path
