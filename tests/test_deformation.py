"""M_e (ExpressionDeformer) and M_p (PoseDeformer): shapes, rig equivalence at init, fitting, gradients."""

import pytest
import torch

from vasa3d.motion.deformation import ExpressionDeformer, PoseDeformer
from vasa3d.motion.rig import ExpressionRig


@pytest.fixture(scope="module")
def rig():
    return ExpressionRig()


def latents(count: int, dim: int, seed: int) -> torch.Tensor:
    """Random ``z_dyn``: rig controls in [0, 1], then residual channels in [-1, 1] (which the rig ignores)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(count, 12, generator=gen), 2 * torch.rand(count, dim - 12, generator=gen) - 1], -1)


def test_expression_deformer_shapes_and_batching(rig):
    model = ExpressionDeformer(dim=16, num_basis=8, hidden=32)
    z = latents(6, 16, seed=0)
    offsets = model(z)
    assert offsets.shape == (6, rig.num_vertices, 3)
    assert model(z.reshape(2, 3, 16)).shape == (2, 3, rig.num_vertices, 3)
    torch.testing.assert_close(model(z[4]), offsets[4])
    shaped = rig.template_vertices * 1.1  # an identity-shaped head, one per batch element
    assert model(z, shaped.expand(6, -1, -1)).shape == offsets.shape
    torch.testing.assert_close(model(z, rig.template_vertices[:468]), offsets[:, :468])  # landmarks only
    with pytest.raises(ValueError, match=r"z_dyn must be \[..., 16\]"):
        model(torch.zeros(3, 12))
    with pytest.raises(ValueError, match="vertices must be"):
        model(z, rig.template_vertices[:100])


def test_from_rig_reproduces_the_rig(rig):
    model = ExpressionDeformer.from_rig(rig, dim=20, num_basis=16)
    z = latents(8, 20, seed=1)
    verts = rig.template_vertices
    torch.testing.assert_close(model(z) + verts, rig.deform(verts, z[:, :12]), atol=1e-6, rtol=0)
    shaped = verts * torch.tensor([1.08, 1.0, 0.97])  # on an identity-shaped head too
    torch.testing.assert_close(model(z, shaped) + shaped, rig.deform(shaped, z[:, :12]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="dim >= 12"):
        ExpressionDeformer.from_rig(rig, dim=8)


def test_expression_deformer_learns_the_rig_and_generalises(rig):
    torch.manual_seed(0)
    model = ExpressionDeformer(dim=16, num_basis=24, hidden=64)
    landmarks = rig.template_vertices[:468]  # fit the landmark vertices only
    with torch.no_grad():
        z_train, z_test = latents(256, 16, seed=2), latents(128, 16, seed=3)
        target_train, target_test = (rig.landmarks(landmarks, z[:, :12])[:, :468] - landmarks for z in (z_train, z_test))

    def error_mm(z, target):  # mean landmark error
        with torch.no_grad():
            return float((model(z, landmarks) - target).norm(dim=-1).mean()) * 1000

    baseline = float(target_test.norm(dim=-1).mean()) * 1000  # no deformation at all (~3.8 mm)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add overhead (and contention on a busy machine)
    try:
        for _ in range(200):
            batch = torch.randint(0, 256, (64,), generator=gen)
            loss = ((model(z_train[batch], landmarks) - target_train[batch]) * 1000).pow(2).sum(-1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    train, test = error_mm(z_train, target_train), error_mm(z_test, target_test)
    assert test < 0.15 * baseline, (train, test, baseline)  # measured: ~0.25 mm against ~3.8 mm
    assert test < 1.5 * train + 0.05


def test_expression_deformer_gradients_reach_all_parameters(rig):
    model = ExpressionDeformer(dim=16, num_basis=8, hidden=32)
    model(latents(4, 16, seed=5)).pow(2).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    from_rig = ExpressionDeformer.from_rig(rig, dim=16, num_basis=12)
    (from_rig(latents(4, 16, seed=5)) * torch.randn(4, rig.num_vertices, 3)).sum().backward()
    assert all(p.grad is not None for p in from_rig.parameters())
    assert from_rig.basis.grad.abs().sum() > 0 and from_rig.linear.weight.grad.abs().sum() > 0


def test_pose_deformer_starts_as_the_rig_and_learns(rig):
    model = PoseDeformer()
    verts = rig.template_vertices
    pose = torch.randn(5, 6, generator=torch.Generator().manual_seed(6)) * torch.tensor([0.3, 0.4, 0.2, 0.02, 0.02, 0.02])
    torch.testing.assert_close(model(verts, pose), rig.pose(verts, pose))
    torch.testing.assert_close(PoseDeformer(neck_blend=False)(verts, pose), rig.pose(verts, pose, neck_blend=False))
    assert model(verts.expand(5, -1, -1), pose).shape == (5, rig.num_vertices, 3)
    torch.testing.assert_close(model(verts, torch.zeros(6)), verts)  # the rest pose is the identity
    (model(verts, pose) * torch.randn(5, rig.num_vertices, 3)).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match=r"z_pose must be \[..., 6\]"):
        model(verts, torch.zeros(5, 3))


def test_state_dicts_hold_only_learnt_tensors():
    assert set(ExpressionDeformer(dim=16, num_basis=4, num_layers=1).state_dict()) == {
        "basis", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "linear.weight", "linear.bias"}
    assert set(PoseDeformer().state_dict()) == {"pose_offsets", "neck_weight_delta"}
