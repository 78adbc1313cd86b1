"""VASA-3D's ``M_e`` (expression) and ``M_p`` (pose) as learnable modules on the head template.

``ExpressionDeformer`` (M_e) maps ``z_dyn [..., D]`` to expression offsets of the template's
vertices: a learnt per-vertex basis, a jaw rotation about the rig's hinge with the rig's jaw
weights, and eyelid closure along the rig's blink motion, their amounts predicted by a small
network. ``ExpressionDeformer.from_rig`` starts it as an exact copy of ``ExpressionRig`` for the
latent convention of :mod:`vasa3d.motion.rig` (the first 12 channels are the rig controls).
Identity offsets are not its job: it deforms whatever identity-shaped vertices it is given.

``PoseDeformer`` (M_p) poses vertices with ``z_pose [..., 6]`` (``MotionLatent.pose``) by the rig's
neck-blended rigid transform, plus learnt, zero-initialised corrections: pose-dependent vertex
offsets (linear in the rotation matrix, as FLAME's pose blendshapes) and the neck's blend weights.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from vasa3d.face.template import load_template
from vasa3d.motion.latent import axis_angle_to_matrix
from vasa3d.motion.rig import BLINK_LEFT, BLINK_RIGHT, JAW, JAW_MAX_ANGLE, LINEAR_CONTROLS, NUM_CONTROLS, ExpressionRig

BASIS_UNIT_M = 1e-3  # the learnt basis is stored in millimetres, so that it trains at the networks' pace


def _rig(template: str | None) -> ExpressionRig:
    return ExpressionRig(None if template is None else load_template(template))


class ExpressionDeformer(nn.Module):
    """M_e: ``z_dyn [..., D]`` -> expression vertex offsets ``[..., V, 3]`` (template frame, metres).

    Args:
        dim: D, the size of ``z_dyn``.
        num_basis: B, the number of learnt per-vertex offset fields.
        hidden: width of the hidden layers of the coefficient network.
        num_layers: hidden layers of the coefficient network (0 = linear only).
        basis_init_mm: standard deviation of the initial basis, in millimetres (0 = zeros).
        template: path of a head template ``.npz``; None uses the packaged one.
    """

    def __init__(
        self,
        dim: int = 32,
        num_basis: int = 32,
        hidden: int = 128,
        num_layers: int = 2,
        basis_init_mm: float = 0.1,
        template: str | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.num_basis = dim, num_basis
        self.rig = _rig(template)
        outputs = num_basis + 3  # basis coefficients, jaw angle (radians), two eyelid closures
        layers: list[nn.Module] = []
        width = dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(width, outputs))
        self.linear = nn.Linear(dim, outputs)  # a direct path: the rig is linear in its controls
        self.basis = nn.Parameter(basis_init_mm * torch.randn(num_basis, self.rig.num_vertices, 3))  # [B, V, 3] mm

    @classmethod
    def from_rig(cls, rig: ExpressionRig, dim: int, num_basis: int = 32, **kwargs) -> "ExpressionDeformer":
        """An ``ExpressionDeformer`` that reproduces ``rig`` at initialisation (for ``z_dyn`` whose first 12
        channels are the rig controls; the other channels start with no effect)."""
        if dim < NUM_CONTROLS or num_basis < len(LINEAR_CONTROLS):
            raise ValueError(f"ExpressionDeformer.from_rig: needs dim >= {NUM_CONTROLS} and num_basis >= "
                             f"{len(LINEAR_CONTROLS)}, got dim={dim}, num_basis={num_basis}")
        model = cls(dim=dim, num_basis=num_basis, **kwargs)
        model.rig = copy.deepcopy(rig).float()
        basis = torch.zeros(num_basis, rig.num_vertices, 3)
        basis[: len(LINEAR_CONTROLS)] = rig.fields.float() / BASIS_UNIT_M
        model.basis = nn.Parameter(basis)
        with torch.no_grad():
            model.linear.weight.zero_()
            model.linear.bias.zero_()
            for basis, control in enumerate(LINEAR_CONTROLS):
                model.linear.weight[basis, control] = 1.0
            model.linear.weight[num_basis, JAW] = JAW_MAX_ANGLE
            model.linear.weight[num_basis + 1, BLINK_LEFT] = 1.0
            model.linear.weight[num_basis + 2, BLINK_RIGHT] = 1.0
            model.mlp[-1].weight.zero_()
            model.mlp[-1].bias.zero_()
        return model

    def amounts(self, z_dyn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(basis coefficients ``[..., B]``, jaw angle ``[...]`` radians, eyelid closures ``[..., 2]`` left, right)."""
        if z_dyn.shape[-1] != self.dim:
            raise ValueError(f"ExpressionDeformer: z_dyn must be [..., {self.dim}], got {tuple(z_dyn.shape)}")
        out = self.linear(z_dyn) + self.mlp(z_dyn)
        return out[..., : self.num_basis], out[..., self.num_basis], out[..., self.num_basis + 1:]

    def forward(self, z_dyn: Tensor, vertices: Tensor | None = None) -> Tensor:
        """Expression offsets ``[..., N, 3]`` (metres) for ``z_dyn [..., D]``, to add to ``vertices [..., N, 3]``:
        the identity-shaped template (N = V; default: the template) the jaw turns and the lids close on,
        or just its landmark vertices (N = 468, e.g. for a landmark loss)."""
        vertices = self.rig.template_vertices if vertices is None else vertices
        count = vertices.shape[-2]
        if count not in (self.rig.num_vertices, self.rig.num_landmark_vertices) or vertices.shape[-1] != 3:
            raise ValueError(f"ExpressionDeformer: vertices must be [..., {self.rig.num_vertices}, 3] or "
                             f"[..., {self.rig.num_landmark_vertices}, 3], got {tuple(vertices.shape)}")
        coefficients, angle, lids = self.amounts(z_dyn.to(vertices.dtype))
        basis = self.basis[:, :count].to(vertices.dtype) * BASIS_UNIT_M
        offsets = torch.einsum("...b,bvc->...vc", coefficients, basis) * self.rig.face_scale(vertices)
        offsets = offsets + torch.einsum("...e,...evc->...vc", lids, self.rig.blink_motion(vertices))
        return self.rig.rotate_jaw(vertices + offsets, vertices, angle) - vertices


class PoseDeformer(nn.Module):
    """M_p: pose vertices ``[..., V, 3]`` with ``z_pose [..., 6]``; at initialisation exactly ``ExpressionRig.pose``.

    Args:
        neck_blend: bend the neck (the rig's blend) instead of turning the whole body.
        template: path of a head template ``.npz``; None uses the packaged one.
    """

    def __init__(self, neck_blend: bool = True, template: str | None = None) -> None:
        super().__init__()
        self.neck_blend = neck_blend
        self.rig = _rig(template)
        # learnt residuals, zero at initialisation
        self.pose_offsets = nn.Parameter(torch.zeros(9, self.rig.num_vertices, 3))  # [9, V, 3] metres per (R - I)
        self.neck_weight_delta = nn.Parameter(torch.zeros(len(self.rig.neck_ids)))  # [n] on the rig's blend

    def neck_weights(self) -> Tensor:
        """``[n]`` the fraction of the head rotation each of the rig's ``neck_ids`` vertices follows."""
        return (self.rig.neck_weights[self.rig.neck_ids] + self.neck_weight_delta).clamp(0.0, 1.0)

    def forward(self, vertices: Tensor, z_pose: Tensor) -> Tensor:
        """Posed vertices ``[..., V, 3]`` from ``vertices [..., V, 3]`` (template frame, expression applied)."""
        if z_pose.shape[-1] != 6:
            raise ValueError(f"PoseDeformer: z_pose must be [..., 6] (axis-angle + translation), got {tuple(z_pose.shape)}")
        z_pose = z_pose.to(vertices.dtype)
        rotation = axis_angle_to_matrix(z_pose[..., :3])
        features = (rotation - torch.eye(3, dtype=rotation.dtype, device=rotation.device)).flatten(-2)
        rest = vertices + torch.einsum("...f,fvc->...vc", features, self.pose_offsets.to(vertices.dtype))
        return self.rig.pose(rest, z_pose, neck_blend=self.neck_blend, neck_weights=self.neck_weights().to(vertices.dtype))
