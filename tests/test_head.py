"""Triangle binding, the Gaussian head and its .ply export."""

import math

import numpy as np
import pytest
import torch

from vasa3d.face.template import load_template
from vasa3d.gaussians.binding import bind_to_world, triangle_frames, world_to_local_points
from vasa3d.gaussians.head import GaussianHead
from vasa3d.gaussians.projection import quat_to_rotmat
from vasa3d.systems.views import yaw_rotation


def _small_head(n=3000):
    template = load_template()
    return GaussianHead(template.vertices, template.faces, num_gaussians=n, seed=1)


def test_gaussians_follow_a_similarity_transform_of_the_mesh():
    head = _small_head()
    verts = head.vertices().detach()
    g0 = head.world_gaussians(verts)
    rot = yaw_rotation(35.0)[:3, :3] @ torch.tensor([[1, 0, 0], [0, math.cos(0.3), -math.sin(0.3)],
                                                    [0, math.sin(0.3), math.cos(0.3)]])
    moved = 1.7 * verts @ rot.T + torch.tensor([0.1, -0.2, 0.3])
    g1 = head.world_gaussians(moved)
    torch.testing.assert_close(g1["means"], 1.7 * g0["means"] @ rot.T + torch.tensor([0.1, -0.2, 0.3]),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g1["scales"], 1.7 * g0["scales"], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(quat_to_rotmat(g1["quats"]), rot @ quat_to_rotmat(g0["quats"]), atol=5e-5, rtol=1e-3)


def test_world_to_local_inverts_binding():
    head = _small_head(2000)
    frames = triangle_frames(head.vertices().detach(), head.faces)
    n = head.num_gaussians
    points = torch.randn(n, 3) * 0.1
    local = world_to_local_points(points, head.binding, frames)
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4)
    means, _, _ = bind_to_world(local, quats, torch.ones(n, 3), head.binding, frames)
    torch.testing.assert_close(means, points, atol=1e-6, rtol=1e-5)


def test_initial_gaussians_cover_every_triangle_and_lie_on_the_surface():
    head = _small_head()
    assert head.num_gaussians >= head.faces.shape[0]
    assert torch.equal(torch.unique(head.binding), torch.arange(head.faces.shape[0]))
    assert head.splats["means"][:, 2].abs().max() < 1e-5  # in the triangle plane
    assert not head.binding.requires_grad


def test_front_render_shows_a_head():
    head = _small_head()
    viewmat = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1.0], [0, 0, 0, 1]])
    K = torch.tensor([[200.0, 0, 48], [0, 200.0, 48], [0, 0, 1]])
    out = head.render(viewmat[None], K[None], 96, 96, background=torch.ones(3), backend="torch")
    alpha = out.alpha[0, ..., 0]
    assert alpha[48, 48] > 0.99  # the face centre is covered
    assert alpha[0, 0] < 0.01 and alpha[95, 0] < 0.01  # corners are background
    assert 0.8 < float(out.depth[0, 48, 48, 0]) < 1.0  # nose is in front of the head centre (1 m away)


def test_export_ply_has_the_3dgs_layout(tmp_path):
    head = _small_head(2500)
    path = head.export_ply(tmp_path / "head.ply")
    raw = path.read_bytes()
    header_end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:header_end].decode()
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert props[:3] == ["x", "y", "z"]
    for name in ["f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                 "rot_0", "rot_1", "rot_2", "rot_3"]:
        assert name in props
    assert f"element vertex {head.num_gaussians}" in header
    data = np.frombuffer(raw[header_end:], dtype="<f4").reshape(head.num_gaussians, len(props))
    g = head.world_gaussians()
    flip = np.diag([1.0, -1.0, -1.0])  # default y_down: the 3DGS/COLMAP frame viewers assume
    np.testing.assert_allclose(data[:, :3], g["means"].detach().numpy() @ flip, atol=1e-6)
    # rotations turn with the positions: R_file = flip @ R_template, so the covariances match
    from vasa3d.gaussians.projection import quat_to_rotmat

    rot = [props.index(f"rot_{i}") for i in range(4)]
    r_file = quat_to_rotmat(torch.from_numpy(data[:, rot].copy())).numpy()
    r_template = quat_to_rotmat(g["quats"].detach()).numpy()
    np.testing.assert_allclose(r_file, flip @ r_template, atol=1e-5)
    # y_up keeps the template frame
    up = head.export_ply(tmp_path / "up.ply", orientation="y_up").read_bytes()
    data_up = np.frombuffer(up[up.index(b"end_header\n") + 11:], dtype="<f4").reshape(head.num_gaussians, -1)
    np.testing.assert_allclose(data_up[:, :3], g["means"].detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="orientation"):
        head.export_ply(tmp_path / "x.ply", orientation="sideways")


def test_resize_to_accepts_a_densified_state_dict():
    head = _small_head(5000)
    bigger = _small_head(6000)
    head.resize_to(bigger.state_dict())
    head.load_state_dict(bigger.state_dict())
    assert head.num_gaussians == 6000


def test_take_is_indexing_with_a_backward_that_sums_in_a_fixed_order():
    from vasa3d.gaussians.binding import take

    gen = torch.Generator().manual_seed(0)
    values = torch.randn(5000, 3, 3, generator=gen)
    index = torch.randint(0, 5000, (200000,), generator=gen)
    weights = torch.randn(200000, 3, 3, generator=gen)
    assert torch.equal(take(values, index), values[index])
    assert torch.equal(take(values, index.reshape(400, 500)), values[index.reshape(400, 500)])

    def grad(gather) -> torch.Tensor:
        leaf = values.clone().requires_grad_()
        (gather(leaf) * weights).sum().backward()
        return leaf.grad

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = [grad(lambda v: take(v, index)) for _ in range(4)]
        reference = grad(lambda v: v[index])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, grads[0]) for g in grads)
    torch.testing.assert_close(grads[0], reference)
