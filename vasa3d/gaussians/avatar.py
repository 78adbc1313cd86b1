"""``GaussianAvatar``: the Gaussian head conditioned on a ``MotionLatent``.

Per frame, ``M_e(z_dyn)`` deforms the identity-shaped template, ``M_p(z_pose)`` poses it (the
neck bends), and the Gaussians ride the deformed triangles (GaussianAvatars-style binding). A
residual MLP on ``(z_dyn, gaze, per-Gaussian features, canonical position)`` adds what the
template cannot show (wrinkles, the inside of the mouth, teeth, eyes): small offsets to each
Gaussian's local position, log-scale, opacity and colour logits. It starts at zero, so an
untrained residual leaves the template-driven head unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

import torch.nn.functional as F

from vasa3d.gaussians.binding import bind_to_world, local_to_world_points, quat_multiply, triangle_frames
from vasa3d.gaussians.head import GaussianHead
from vasa3d.gaussians.projection import rotmat_to_quat
from vasa3d.gaussians.render import Backend, RenderOutput, rasterize
from vasa3d.motion.deformation import ExpressionDeformer, PoseDeformer
from vasa3d.motion.latent import MotionLatent

RESIDUAL_CHANNELS = {"means": 3, "scales": 3, "opacities": 1, "colors": 3}
POSITION_SCALE = 10.0  # template-frame metres -> about unit range over a head


class ResidualDeformer(nn.Module):
    """Per-Gaussian residuals from the latent: ``MLP(cond [B, C], features [N, F], positions [N, 3])``.

    The first layer is split (``W_c cond + W_g [features, position]``) so its cost is one
    ``[B, H]`` and one ``[N, H]`` product; the rest runs on ``[B, N, H]``.

    Args:
        cond_dim: size of the condition (``z_dyn`` and gaze).
        feature_dim: size of the learnt per-Gaussian feature.
        hidden: width of the hidden layers.
        num_layers: hidden layers (at least 1).
    """

    def __init__(self, cond_dim: int, feature_dim: int = 16, hidden: int = 64, num_layers: int = 1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ResidualDeformer: num_layers must be >= 1, got {num_layers}")
        self.cond_in = nn.Linear(cond_dim, hidden)
        self.gaussian_in = nn.Linear(feature_dim + 3, hidden, bias=False)
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):
            layers += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.body = nn.Sequential(*layers, nn.SiLU())
        self.out = nn.Linear(hidden, sum(RESIDUAL_CHANNELS.values()))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def per_gaussian(self, features: Tensor, positions: Tensor) -> Tensor:
        """``[N, H]`` the per-Gaussian half of the first layer (independent of the latent)."""
        return self.gaussian_in(torch.cat([features, positions * POSITION_SCALE], dim=-1))

    def _compiled_tail(self, per_gaussian: Tensor) -> bool:
        """Whether the layers after the split first layer can run as ``residual_forward`` of ``csrc/avatar.cpp``
        (with ``residual_backward`` under autograd): float32 on the CPU, one hidden layer (the body is just the
        SiLU), the kernels built."""
        return len(self.body) == 1 and self.out.out_features <= 16 and _float32_cpu_ready(per_gaussian)

    def forward(self, cond: Tensor, features: Tensor, positions: Tensor,
                per_gaussian: Tensor | None = None) -> dict[str, Tensor]:
        """Residuals ``{name: [B, N, k]}`` for ``cond [B, C]``, ``features [N, F]``, ``positions [N, 3]``
        (``per_gaussian [N, H]``: :meth:`per_gaussian` of those, when already computed)."""
        if per_gaussian is None:
            per_gaussian = self.per_gaussian(features, positions)
        return split_residuals(self.packed(cond, per_gaussian))

    def packed(self, cond: Tensor, per_gaussian: Tensor) -> Tensor:
        """``[B, N, sum(RESIDUAL_CHANNELS)]`` the residuals in one tensor, channels in ``RESIDUAL_CHANNELS``
        order, from ``per_gaussian [N, H]`` (:meth:`per_gaussian`)."""
        if self._compiled_tail(per_gaussian):  # one pass, no [B, N, H] intermediates
            hidden_bias = self.cond_in(cond)
            if torch.is_grad_enabled() and any(t.requires_grad for t in (per_gaussian, hidden_bias, self.out.weight,
                                                                           self.out.bias)):
                return _ResidualTail.apply(per_gaussian, hidden_bias, self.out.weight, self.out.bias)
            return torch.ops.vasa3d_composite.residual_forward(per_gaussian, hidden_bias, self.out.weight, self.out.bias)
        return self.out(self.body(self.cond_in(cond)[:, None, :] + per_gaussian[None]))


class _ResidualTail(torch.autograd.Function):
    """``silu(per_gaussian + hidden_bias[b]) @ weight^T + bias`` as ``residual_forward``, with the compiled backward."""

    @staticmethod
    def forward(ctx, per_gaussian, hidden_bias, weight, bias):
        ctx.save_for_backward(per_gaussian, hidden_bias, weight)
        return torch.ops.vasa3d_composite.residual_forward(per_gaussian, hidden_bias, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_out):
        return tuple(torch.ops.vasa3d_composite.residual_backward(*ctx.saved_tensors, v_out.contiguous()))


def split_residuals(packed: Tensor) -> dict[str, Tensor]:
    """``{name: [..., k]}`` views of ``packed [..., sum(RESIDUAL_CHANNELS)]``."""
    return dict(zip(RESIDUAL_CHANNELS, packed.split(list(RESIDUAL_CHANNELS.values()), dim=-1)))


def _float32_cpu_ready(tensor: Tensor) -> bool:
    """Whether ``tensor`` can go through the compiled float32 kernels (``composite_cpp.cpu_ready``)."""
    from vasa3d.gaussians.composite_cpp import cpu_ready

    return cpu_ready(tensor, dtypes=(torch.float32,))


@dataclass
class AvatarFrame:
    """The avatar's geometry for a batch of latents."""

    expressed: Tensor  # [B, V, 3] identity + expression, before pose (template frame)
    posed: Tensor  # [B, V, 3] after M_p (template frame = world)
    residuals: dict[str, Tensor] | None  # {name: [B, N, k]} or None without a residual MLP
    packed_residuals: Tensor | None = None  # [B, N, sum k]: the same, in one tensor (inference)


class GaussianAvatar(nn.Module):
    """A :class:`GaussianHead` animated by ``M_e``, ``M_p`` and an optional residual MLP.

    Args:
        head: the Gaussians and the identity offsets (its splats need a ``features`` entry when
            ``residual`` is given).
        expression: ``M_e``.
        pose: ``M_p``.
        residual: the residual MLP, or None for a purely template-driven head.
    """

    def __init__(self, head: GaussianHead, expression: ExpressionDeformer, pose: PoseDeformer,
                 residual: ResidualDeformer | None = None) -> None:
        super().__init__()
        if residual is not None and "features" not in head.splats:
            raise ValueError("GaussianAvatar: a residual MLP needs per-Gaussian features; build the GaussianHead "
                             "with feature_dim > 0")
        self.head, self.expression, self.pose_model, self.residual = head, expression, pose, residual
        self._static: tuple[tuple, dict[str, Tensor]] | None = None

    def static(self) -> dict[str, Tensor] | None:
        """Per-avatar tensors that no frame changes, for inference (None while autograd records).

        The identity-shaped template vertices, the normalised local quaternions, the per-Gaussian
        half of the residual MLP (or, without a residual, the activated scales, opacities and
        colours). Computed once and kept until a parameter changes (an optimiser step or
        densification gives it a new version or a new tensor).
        """
        if torch.is_grad_enabled():
            return None
        params = [self.head.template_vertices, self.head.shape_offsets, *self.head.splats.values()]
        if self.residual is not None:
            params += list(self.residual.gaussian_in.parameters())
        key = tuple((id(p), p._version, p.shape) for p in params)
        if self._static is not None and self._static[0] == key:
            return self._static[1]
        splats = self.head.splats
        identity = self.head.vertices()
        static = {"identity": identity, "local_quats": F.normalize(splats["quats"], dim=-1)}
        if self.residual is not None:
            canonical = self.head.world_gaussians(identity)["means"]
            static["per_gaussian"] = self.residual.per_gaussian(splats["features"], canonical)
        else:
            static.update(scales=torch.exp(splats["scales"]), opacities=torch.sigmoid(splats["opacities"]),
                          colors=torch.sigmoid(splats["colors"]))
        self._static = (key, static)
        return static

    @property
    def rig(self):
        """The expression rig (iris points, face scale) that ``M_e`` is built on."""
        return self.expression.rig

    def condition(self, latent: MotionLatent) -> Tensor:
        """``[B, D + 2]`` the residual MLP's input: ``z_dyn`` and gaze (zeros when absent)."""
        gaze = latent.gaze if latent.gaze is not None else latent.dyn.new_zeros(latent.batch_shape + (2,))
        return torch.cat([latent.dyn, gaze], dim=-1)

    def frame(self, latent: MotionLatent, rigid: bool = False, residual: bool = True) -> AvatarFrame:
        """Geometry for ``latent [B]``; ``rigid`` skips ``M_e`` and the residual (the static-head baseline),
        ``residual=False`` just the residual."""
        static = self.static()
        identity = self.head.vertices() if static is None else static["identity"]
        if rigid:
            expressed = identity.expand(latent.batch_shape + identity.shape)
        else:
            expressed = identity + self.expression(latent.dyn, identity.expand(latent.batch_shape + identity.shape))
        posed = self.pose_model(expressed, latent.pose)
        residuals = packed = None
        if self.residual is not None and residual and not rigid:
            if static is not None:
                packed = self.residual.packed(self.condition(latent), static["per_gaussian"])
                residuals = split_residuals(packed)
            else:
                with torch.no_grad():  # canonical positions: an input, not something to move
                    canonical = self.head.world_gaussians(identity)["means"]
                residuals = self.residual(self.condition(latent), self.head.splats["features"], canonical)
        return AvatarFrame(expressed, posed, residuals, packed)

    def landmarks(self, latent: MotionLatent, frame: AvatarFrame) -> Tensor:
        """``[B, 478, 3]`` world landmarks: the 468 face vertices of the posed mesh, then the gaze-turned irises."""
        n = self.rig.num_landmark_vertices
        iris = self.rig.iris(frame.expressed, latent.gaze)
        head = latent.head_transform().to(iris.dtype)
        iris = iris @ head[..., :3, :3].transpose(-1, -2) + head[..., None, :3, 3]
        return torch.cat([frame.posed[..., :n, :], iris], dim=-2)

    def world_gaussians(self, frame: AvatarFrame, index: int) -> dict[str, Tensor]:
        """Activated world Gaussians of frame ``index`` of ``frame`` (as :meth:`GaussianHead.world_gaussians`),
        plus ``anchors [N, 3]``: the point of each Gaussian's triangle plane under its mean."""
        splats = self.head.splats
        static = self.static()
        if static is not None:
            return self._world_gaussians_inference(frame, index, static)
        means, log_scales = splats["means"], splats["scales"]
        opacities, colors = splats["opacities"], splats["colors"]
        if frame.residuals is not None:
            res = {k: v[index] for k, v in frame.residuals.items()}
            means, log_scales = means + res["means"], log_scales + res["scales"]
            opacities, colors = opacities + res["opacities"][:, 0], colors + res["colors"]
        frames = triangle_frames(frame.posed[index], self.head.faces)
        world, quats, scales, anchors = bind_to_world(means, splats["quats"], torch.exp(log_scales), self.head.binding,
                                                      frames, anchors=True)
        return {"means": world, "quats": quats, "scales": scales, "opacities": torch.sigmoid(opacities),
                "colors": torch.sigmoid(colors), "anchors": anchors}

    def _world_gaussians_inference(self, frame: AvatarFrame, index: int, static: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`world_gaussians` without autograd: per-avatar tensors from :meth:`static`; on the CPU one
        compiled pass (``avatar_forward`` of ``csrc/render.cpp``), else torch with each triangle's rotation
        turned into a quaternion once per triangle rather than once per Gaussian (the same arithmetic)."""
        splats, binding = self.head.splats, self.head.binding
        posed = frame.posed[index]
        if _float32_cpu_ready(posed):
            residual = posed.new_zeros(0)
            if frame.packed_residuals is not None:
                residual = frame.packed_residuals[index]
            elif frame.residuals is not None:
                residual = torch.cat([frame.residuals[k][index] for k in RESIDUAL_CHANNELS], dim=-1)
            names = ("means", "quats", "scales", "opacities", "colors", "anchors")
            return dict(zip(names, torch.ops.vasa3d_composite.avatar_forward(
                posed, self.head.faces, binding, splats["means"], static["local_quats"], splats["scales"],
                splats["opacities"], splats["colors"], residual)))
        means = splats["means"]
        if frame.residuals is not None:
            res = {k: v[index] for k, v in frame.residuals.items()}
            means = means + res["means"]
            scales = torch.exp(splats["scales"] + res["scales"])
            opacities = torch.sigmoid(splats["opacities"] + res["opacities"][:, 0])
            colors = torch.sigmoid(splats["colors"] + res["colors"])
        else:
            scales, opacities, colors = static["scales"], static["opacities"], static["colors"]
        frames = triangle_frames(frame.posed[index], self.head.faces)
        k = frames.scales[binding, None]
        world = local_to_world_points(means, binding, frames)
        quats = quat_multiply(rotmat_to_quat(frames.rotations)[binding], static["local_quats"])
        anchors = local_to_world_points(means * means.new_tensor([1.0, 1.0, 0.0]), binding, frames)
        return {"means": world, "quats": quats, "scales": k * scales, "opacities": opacities, "colors": colors,
                "anchors": anchors}

    def render(
        self,
        frame: AvatarFrame,
        index: int,
        viewmats: Tensor,  # [C, 4, 4]
        Ks: Tensor,  # [C, 3, 3]
        size: int,
        background: Tensor | None = None,  # [3]
        backend: Backend = "auto",
    ) -> RenderOutput:
        """Render frame ``index`` into C cameras (channels last, see :func:`rasterize`)."""
        g = self.world_gaussians(frame, index)
        return rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks, size, size,
                         backgrounds=background, backend=backend)

    @torch.no_grad()
    def render_latents(self, latent: MotionLatent, viewmats: Tensor, Ks: Tensor, size: int,
                       background: Tensor | None = None, backend: Backend = "auto", rigid: bool = False) -> Tensor:
        """``[T, C, 3, size, size]`` renders of ``latent [T]`` from C cameras (``viewmats [C, 4, 4]``, ``Ks [C, 3, 3]``)."""
        frames = []
        for t in range(latent.batch_shape[0]):
            geometry = self.frame(latent[t:t + 1], rigid=rigid)
            out = self.render(geometry, 0, viewmats, Ks, size, background, backend)
            frames.append(out.rgb.permute(0, 3, 1, 2).clamp(0, 1))
        return torch.stack(frames)
