"""The compiled kernels of the animatable head (``csrc/avatar.cpp``) against their torch references: the
inference pass (``avatar_forward``), the residual MLP's tail (``residual_forward``/``residual_backward``)
and the training passes that bind Gaussians to the deformed mesh (``frames_*``, ``bind_*``)."""

from __future__ import annotations

import pytest
import torch

F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def _built(compiled_kernels) -> None:
    """Every test here needs the compiled kernels (``conftest.compiled_kernels``)."""


def _avatar(residual: bool):
    from vasa3d.face.template import load_template
    from vasa3d.gaussians.avatar import GaussianAvatar, ResidualDeformer
    from vasa3d.gaussians.head import GaussianHead
    from vasa3d.motion.deformation import ExpressionDeformer, PoseDeformer

    torch.manual_seed(0)
    template = load_template()
    head = GaussianHead(template.vertices, template.faces, num_gaussians=6000, feature_dim=8 if residual else 0)
    with torch.no_grad():
        for p in (head.splats["means"], head.splats["quats"], head.splats["scales"], head.splats["opacities"],
                  head.splats["colors"], head.shape_offsets):
            p.add_(0.05 * torch.randn_like(p))
    mlp = ResidualDeformer(cond_dim=18, feature_dim=8, hidden=16) if residual else None
    if mlp is not None:
        with torch.no_grad():
            for p in mlp.out.parameters():
                p.normal_(0.0, 0.05)
    return GaussianAvatar(head, ExpressionDeformer(dim=16, num_basis=8, hidden=32), PoseDeformer(), mlp)


@pytest.mark.parametrize("residual", [True, False])
def test_avatar_inference_gaussians_equal_the_training_path(residual):
    """GaussianAvatar.world_gaussians without autograd (cached per-avatar tensors, the compiled
    avatar_forward) against the autograd path; the cache follows parameter updates."""
    from vasa3d.motion.latent import MotionLatent

    avatar = _avatar(residual)
    gen = torch.Generator().manual_seed(1)
    latent = MotionLatent(0.3 * torch.randn(1, 16, generator=gen), 0.1 * torch.randn(1, 6, generator=gen),
                          gaze=0.1 * torch.randn(1, 2, generator=gen))
    for step in range(2):
        train = avatar.world_gaussians(avatar.frame(latent), 0)
        assert train["means"].requires_grad
        with torch.inference_mode():
            infer = avatar.world_gaussians(avatar.frame(latent), 0)
        for name, value in train.items():
            torch.testing.assert_close(infer[name], value.detach(), atol=2e-6, rtol=1e-5)
        with torch.no_grad():  # a training step: the cached tensors must follow
            avatar.head.splats["quats"].add_(0.1)
            avatar.head.splats["colors"].add_(0.3)
            if residual:
                avatar.head.splats["features"].mul_(2.0)


def test_residual_forward_equals_the_torch_mlp():
    """residual_forward (the per-frame half of a one-hidden-layer ResidualDeformer) against torch,
    for a batch of conditions and a Gaussian count that is not a multiple of its block."""
    gen = torch.Generator().manual_seed(4)
    per_gaussian, hidden_bias = torch.randn(1003, 24, generator=gen), torch.randn(2, 24, generator=gen)
    weight, bias = torch.randn(10, 24, generator=gen), torch.randn(10, generator=gen)
    ours = torch.ops.vasa3d_composite.residual_forward(per_gaussian, hidden_bias, weight, bias)
    ref = torch.nn.functional.silu(per_gaussian[None] + hidden_bias[:, None]) @ weight.T + bias
    assert ours.shape == (2, 1003, 10)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="at most"):
        torch.ops.vasa3d_composite.residual_forward(per_gaussian, hidden_bias, torch.randn(17, 24), torch.randn(17))


@pytest.mark.parametrize("anchors", [True, False])
def test_bind_to_world_compiled_equals_the_torch_reference_forward_and_backward(anchors):
    """frames_forward/backward and bind_forward/backward (triangle frames with their quaternions, and the
    per-Gaussian half of bind_to_world, for training) against the torch reference on a random mesh, in
    float64: outputs and every gradient (vertices through the triangle frames, local means, quaternions,
    scales), with triangles that take each of rotmat_to_quat's four branches; an output the loss does not
    use gets no gradient; the per-triangle and per-vertex sums give the same bits on one thread and on two."""
    from vasa3d.gaussians.binding import bind_to_world, triangle_frames
    from vasa3d.gaussians.projection import rotmat_to_quat

    gen = torch.Generator().manual_seed(5)
    vertices = torch.randn(40, 3, generator=gen, dtype=F64)
    faces = torch.stack([torch.randperm(40, generator=gen)[:3] for _ in range(60)])
    binding = torch.randint(0, 60, (500,), generator=gen)
    leaves = {"vertices": vertices, "means": 0.3 * torch.randn(500, 3, generator=gen, dtype=F64),
              "quats": torch.randn(500, 4, generator=gen, dtype=F64),
              "scales": torch.rand(500, 3, generator=gen, dtype=F64) + 0.1}
    weights = [torch.randn(500, w, generator=gen, dtype=F64) for w in (3, 4, 3, 3)]
    m = triangle_frames(vertices, faces, backend="torch").rotations
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    diagonal = torch.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1)  # picks the same row as the norms
    assert set(diagonal.argmax(-1).tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(triangle_frames(vertices, faces).quats, rotmat_to_quat(m), atol=1e-12, rtol=0)

    def run(backend: str, skip_quats: bool = False):
        params = {k: v.clone().requires_grad_() for k, v in leaves.items()}
        frames = triangle_frames(params["vertices"], faces, backend=backend)
        assert (frames.quats is not None) == (backend == "auto")
        out = bind_to_world(params["means"], params["quats"], params["scales"], binding, frames, anchors=anchors,
                            backend=backend)
        assert len(out) == (4 if anchors else 3)
        loss = sum((o * w).sum() for i, (o, w) in enumerate(zip(out, weights)) if not (skip_quats and i == 1))
        loss.backward()
        return [o.detach() for o in out], {k: v.grad for k, v in params.items()}

    for skip in (False, True):
        ours, ours_grads = run("auto", skip)
        ref, ref_grads = run("torch", skip)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        if skip:  # the reference leaves the unused path without a gradient; ours gives zeros
            assert ref_grads.pop("quats") is None and torch.count_nonzero(ours_grads.pop("quats")) == 0
        for name, grad in ref_grads.items():
            torch.testing.assert_close(ours_grads[name], grad, atol=1e-10, rtol=1e-10)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("auto")[1]
        torch.set_num_threads(2)
        two = run("auto")[1]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(one[k], two[k]) for k in leaves)


def test_residual_backward_equals_the_torch_mlp_gradients():
    """ResidualDeformer under autograd (residual_forward with the compiled residual_backward) against the torch
    layers: outputs and the gradients of the per-Gaussian features, the condition layer and the output layer,
    for a Gaussian count that is not a multiple of the block; the kernel gives the same bits on one thread
    and on two."""
    from vasa3d.gaussians.avatar import ResidualDeformer

    torch.manual_seed(3)
    module = ResidualDeformer(cond_dim=18, feature_dim=16, hidden=24)
    torch.nn.init.normal_(module.out.weight, std=0.3)
    torch.nn.init.normal_(module.out.bias, std=0.3)
    gen = torch.Generator().manual_seed(4)
    cond, positions = torch.randn(3, 18, generator=gen), torch.randn(1003, 3, generator=gen)
    features = torch.randn(1003, 16, generator=gen)
    weights = torch.randn(3, 1003, 10, generator=gen)

    def run(compiled: bool):
        module.zero_grad(set_to_none=True)
        leaf = features.clone().requires_grad_()
        per_gaussian = module.per_gaussian(leaf, positions)
        if compiled:
            out = module.packed(cond, per_gaussian)
        else:  # the torch layers, op by op
            out = module.out(module.body(module.cond_in(cond)[:, None, :] + per_gaussian[None]))
        (out * weights).sum().backward()
        return out.detach(), [leaf.grad] + [p.grad.clone() for p in module.parameters()]

    ours, ours_grads = run(True)
    ref, ref_grads = run(False)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    args = (module.per_gaussian(features, positions).detach(), module.cond_in(cond).detach(),
            module.out.weight.detach(), weights)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.vasa3d_composite.residual_backward(*args)
        torch.set_num_threads(2)
        two = torch.ops.vasa3d_composite.residual_backward(*args)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))  # the kernel's own sums (torch's matmuls may vary)
