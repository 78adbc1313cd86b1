"""Gaussians bound to mesh triangles (GaussianAvatars-style), independent of how the mesh deforms.

Each Gaussian has a parent triangle and lives in that triangle's local frame: origin at
the centroid, x along the first edge, z along the normal, and a uniform scale ``k`` (the
mean edge length). Given any deformed vertex positions, :func:`bind_to_world` moves the
Gaussians with their triangles: ``mean = R (k * local_mean) + centroid``, ``rotation =
R * local_rotation``, ``scale = k * local_scale``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vasa3d.gaussians.projection import rotmat_to_quat


class TriangleFrames(NamedTuple):
    """Local frames of every triangle of a mesh."""

    centroids: Tensor  # [F, 3]
    rotations: Tensor  # [F, 3, 3] columns: edge direction, in-plane normal to it, face normal
    scales: Tensor  # [F] mean edge length
    quats: Tensor | None = None  # [F, 4] rotmat_to_quat(rotations), when the compiled path made it alongside


def take(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` (rows of ``values``) through ``index_select``. Its backward sums the gradient rows in a
    fixed order; advanced indexing's (``index_put_`` with accumulate) adds them in thread-timing order on the CPU,
    so that a fit on two threads differed from run to run (and the built-in teacher with it)."""
    return values.index_select(0, index.reshape(-1)).reshape(*index.shape, *values.shape[1:])


def triangle_frames(vertices: Tensor, faces: Tensor, backend: str = "auto") -> TriangleFrames:
    """Frames of ``faces [F, 3]`` on ``vertices [V, 3]`` (differentiable in the vertices).

    ``backend="auto"``: on the CPU, when the compiled kernels are built, one compiled pass with a
    hand-written backward (``frames_forward``/``frames_backward`` of ``csrc/avatar.cpp``) that also gives
    each frame's quaternion (``quats``); ``"torch"``: the reference, op by op (``quats`` None).
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"triangle_frames: backend={backend!r}: use 'auto' or 'torch'")
    if backend == "auto" and vertices.dim() == 2 and _cpu_ready(vertices):
        rotations, scales, centroids, quats = _Frames.apply(vertices, faces)
        return TriangleFrames(centroids, rotations, scales, quats)
    v0, v1, v2 = take(vertices, faces[:, 0]), take(vertices, faces[:, 1]), take(vertices, faces[:, 2])
    e0, e1, e2 = v1 - v0, v2 - v1, v0 - v2
    normal = F.normalize(torch.linalg.cross(e0, -e2, dim=-1), dim=-1, eps=1e-12)
    axis_x = F.normalize(e0, dim=-1, eps=1e-12)
    axis_y = torch.linalg.cross(normal, axis_x, dim=-1)
    rotations = torch.stack([axis_x, axis_y, normal], dim=-1)
    scales = (e0.norm(dim=-1) + e1.norm(dim=-1) + e2.norm(dim=-1)) / 3.0
    return TriangleFrames((v0 + v1 + v2) / 3.0, rotations, scales)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of (w, x, y, z) quaternions ``[..., 4]``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def bind_to_world(
    local_means: Tensor,  # [N, 3] in units of the parent triangle's scale
    local_quats: Tensor,  # [N, 4] (w, x, y, z)
    local_scales: Tensor,  # [N, 3] activated, in units of the parent triangle's scale
    binding: Tensor,  # [N] int64 parent triangle ids
    frames: TriangleFrames,
    anchors: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, ...]:
    """World means ``[N, 3]``, quats ``[N, 4]`` and scales ``[N, 3]`` of bound Gaussians; with ``anchors``, also
    each mean's foot on its triangle's plane (``local_to_world_points`` of the mean with z = 0), ``[N, 3]``.

    ``backend="auto"``: on the CPU, when the compiled kernels are built, the per-Gaussian half runs as one
    compiled pass with a hand-written backward (``bind_forward``/``bind_backward`` of ``csrc/avatar.cpp``);
    the per-triangle half (each triangle's quaternion) stays in torch. ``"torch"``: the reference, op by op.
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"bind_to_world: backend={backend!r}: use 'auto' or 'torch'")
    quats = F.normalize(local_quats, dim=-1)
    frame_quats = frames.quats if frames.quats is not None else rotmat_to_quat(frames.rotations)
    if backend == "auto" and _cpu_ready(local_means, *(t for t in frames if t is not None)):
        out = _BindGaussians.apply(frames.rotations, frames.scales, frames.centroids, frame_quats, binding,
                                   local_means, quats, local_scales, anchors)
        return out if anchors else out[:3]
    k = take(frames.scales, binding)[:, None]
    means = local_to_world_points(local_means, binding, frames)
    # one conversion per triangle, then gathered: the same values as converting each Gaussian's copy
    out = (means, quat_multiply(take(frame_quats, binding), quats), k * local_scales)
    if anchors:
        out += (local_to_world_points(local_means * local_means.new_tensor([1.0, 1.0, 0.0]), binding, frames),)
    return out


def _cpu_ready(*tensors: Tensor) -> bool:
    from vasa3d.gaussians.composite_cpp import cpu_ready  # imported late: it builds the kernels on first use

    return cpu_ready(*tensors)


class _Frames(torch.autograd.Function):
    """:func:`triangle_frames` and each frame's quaternion as one compiled pass, with its hand-written backward."""

    @staticmethod
    def forward(ctx, vertices, faces):
        ctx.save_for_backward(vertices, faces)
        return tuple(torch.ops.vasa3d_composite.frames_forward(vertices, faces))

    @staticmethod
    @once_differentiable
    def backward(ctx, v_rotations, v_scales, v_centroids, v_quats):
        vertices, faces = ctx.saved_tensors
        empty = vertices.new_zeros(0)
        grads = [empty if g is None else g for g in (v_rotations, v_scales, v_centroids, v_quats)]
        return torch.ops.vasa3d_composite.frames_backward(vertices, faces, *grads), None


class _BindGaussians(torch.autograd.Function):
    """The per-Gaussian half of :func:`bind_to_world` as one compiled pass, with its hand-written backward."""

    @staticmethod
    def forward(ctx, rotations, frame_scales, centroids, frame_quats, binding, means, quats, scales, anchors):
        inputs = (rotations, frame_scales, centroids, frame_quats, binding, means, quats, scales)
        ctx.save_for_backward(*inputs)
        ctx.anchors = anchors
        outs = torch.ops.vasa3d_composite.bind_forward(*inputs, anchors)
        if not anchors:
            ctx.mark_non_differentiable(outs[3])
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_means, v_quats, v_scales, v_anchors):
        empty = ctx.saved_tensors[5].new_zeros(0)
        grads = [empty if g is None else g for g in (v_means, v_quats, v_scales)]
        grads.append(empty if v_anchors is None or not ctx.anchors else v_anchors)
        out = torch.ops.vasa3d_composite.bind_backward(*ctx.saved_tensors, *grads)
        return (*out[:4], None, *out[4:], None)


def local_to_world_points(points: Tensor, binding: Tensor, frames: TriangleFrames) -> Tensor:
    """Local points ``[N, 3]`` (parent-triangle units, see :func:`bind_to_world`) to world ``[N, 3]``."""
    k = take(frames.scales, binding)[:, None]
    return (take(frames.rotations, binding) @ (k * points)[..., None]).squeeze(-1) + take(frames.centroids, binding)


def world_to_local_points(points: Tensor, binding: Tensor, frames: TriangleFrames) -> Tensor:
    """Inverse of the mean transform of :func:`bind_to_world`: world ``[N, 3]`` to local ``[N, 3]``."""
    rot = take(frames.rotations, binding)
    rel = (points - take(frames.centroids, binding))[..., None]
    return (rot.transpose(-1, -2) @ rel).squeeze(-1) / take(frames.scales, binding)[:, None]

