"""Projection against gsplat's reference, the tiled torch compositor against a dense one, gradients."""

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
from render_reference import composite_dense, random_scene, random_scene3d

from vasa3d.gaussians import rasterize
from vasa3d.gaussians.composite import bin_gaussians, composite_torch
from vasa3d.gaussians.projection import covariance_from_quat_scale, project_gaussians, quat_to_rotmat, rotmat_to_quat


def test_projection_matches_gsplat_reference():
    means, quats, scales, _, _, viewmats, Ks = random_scene3d(500)
    means[:5, 2] = -3.0  # behind the camera: culled
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    ref_radii, ref_m2d, ref_depth, ref_conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, 64, 48, eps2d=0.3, near_plane=0.01, far_plane=100.0)
    ours = project_gaussians(means, covariance_from_quat_scale(quats, scales), viewmats, Ks, 64, 48,
                             eps2d=0.3, near_plane=0.01, far_plane=100.0)
    assert torch.equal(ours.radii, ref_radii)
    visible = (ref_radii > 0).all(-1)
    assert visible.sum() > 100 and not visible[:, :5].any()
    torch.testing.assert_close(ours.means2d[visible], ref_m2d[visible], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.conics[visible], ref_conics[visible], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.depths, ref_depth)


def test_quaternion_round_trip():
    quats = torch.nn.functional.normalize(torch.randn(1000, 4, dtype=torch.float64), dim=-1)
    quats = torch.where(quats[:, :1] < 0, -quats, quats)
    torch.testing.assert_close(rotmat_to_quat(quat_to_rotmat(quats)), quats)


@pytest.mark.parametrize("width,height,n", [(37, 29, 80), (64, 48, 600)])
def test_tiled_torch_matches_dense(width, height, n):
    m2d, conics, opac, colors, radii, depths = random_scene(n, width, height, seed=n, dtype=torch.float64)
    ref_rgb, ref_alpha = composite_dense(m2d, conics, opac, colors, radii, depths, width, height)
    bins = bin_gaussians(m2d, radii, depths, width, height, 16)
    rgb, alpha = composite_torch(m2d, conics, opac, colors, bins, width, height, max_elements=4096)
    torch.testing.assert_close(rgb, ref_rgb)
    torch.testing.assert_close(alpha, ref_alpha)
    assert ref_alpha.max() > 0.99  # dense enough that the early stop matters


def test_binning_lists_are_depth_sorted_and_complete():
    m2d, _, _, _, radii, depths = random_scene(200, 50, 40, seed=3)
    bins = bin_gaussians(m2d, radii, depths, 50, 40, 16)
    for tile in range(bins.tiles_x * bins.tiles_y):
        ids = bins.flat_ids[bins.tile_offsets[tile]:bins.tile_offsets[tile + 1]]
        assert torch.all(depths[ids][1:] >= depths[ids][:-1])
    tx0 = torch.floor((m2d[:, 0] - radii[:, 0]) / 16).clamp(0, bins.tiles_x)
    tx1 = torch.ceil((m2d[:, 0] + radii[:, 0]) / 16).clamp(0, bins.tiles_x)
    ty0 = torch.floor((m2d[:, 1] - radii[:, 1]) / 16).clamp(0, bins.tiles_y)
    ty1 = torch.ceil((m2d[:, 1] + radii[:, 1]) / 16).clamp(0, bins.tiles_y)
    assert bins.flat_ids.numel() == int(((tx1 - tx0) * (ty1 - ty0)).sum())


def test_tiled_torch_gradcheck():
    m2d, conics, opac, colors, radii, depths = random_scene(12, 20, 18, seed=5, dtype=torch.float64)
    bins = bin_gaussians(m2d, radii, depths, 20, 18, 16)
    inputs = [t.clone().requires_grad_() for t in (m2d, conics, opac, colors)]

    def fn(m, c, o, col):
        rgb, alpha = composite_torch(m, c, o, col, bins, 20, 18)
        return rgb, alpha

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_rasterize_torch_backend_outputs_and_gradients():
    means, quats, scales, opac, colors, viewmats, Ks = random_scene3d(200, dtype=torch.float64)
    params = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
    out = rasterize(*params, viewmats, Ks, 64, 48, backgrounds=torch.ones(3, dtype=torch.float64),
                    backend="torch")
    assert out.rgb.shape == (2, 48, 64, 3) and out.alpha.shape == (2, 48, 64, 1) and out.depth.shape == (2, 48, 64, 1)
    covered = out.alpha[..., 0] > 0.5
    assert covered.any() and (~covered).any()
    # depth is the expected camera z of what covers the pixel: inside the scene's depth range
    assert out.depth[covered].min() > 1.6 and out.depth[covered].max() < 3.4
    # background shows where nothing covers
    assert torch.allclose(out.rgb[out.alpha[..., 0] == 0], torch.ones(3, dtype=torch.float64))
    out.rgb.sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert out.info["means2d"].grad is not None  # for densification


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_rasterize_without_depth_gives_the_same_images_and_gradients(backend, request):
    if backend == "cpp":
        request.getfixturevalue("compiled_kernels")
    means, quats, scales, opac, colors, viewmats, Ks = random_scene3d(200, dtype=torch.float64)
    runs = []
    for depth in (True, False):
        params = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
        out = rasterize(*params, viewmats, Ks, 64, 48, backgrounds=torch.ones(3, dtype=torch.float64),
                        backend=backend, depth=depth)
        (out.rgb.sin().sum() + out.alpha.square().sum()).backward()
        runs.append((out, [p.grad for p in params]))
    (with_depth, grads_with), (without, grads_without) = runs
    assert without.depth is None and with_depth.depth is not None
    assert torch.equal(without.rgb, with_depth.rgb) and torch.equal(without.alpha, with_depth.alpha)
    for a, b in zip(grads_with, grads_without):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=0)


def test_rasterize_rejects_bad_shapes():
    means, quats, scales, opac, colors, viewmats, Ks = random_scene3d(10)
    with pytest.raises(ValueError, match="scales"):
        rasterize(means, quats, scales[:, :2], opac, colors, viewmats, Ks, 16, 16, backend="torch")


@pytest.mark.gpu
def test_cpu_renderer_matches_gsplat_on_cuda():
    means, quats, scales, opac, colors, viewmats, Ks = random_scene3d(2000)
    params = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
    cpu = rasterize(*params, viewmats, Ks, 64, 48, backgrounds=torch.ones(3), backend="auto")
    cpu.rgb.sum().backward()
    cuda_params = [t.detach().cuda().requires_grad_() for t in (means, quats, scales, opac, colors)]
    gpu = rasterize(*cuda_params, viewmats.cuda(), Ks.cuda(), 64, 48, backgrounds=torch.ones(3, device="cuda"),
                    backend="gsplat")
    gpu.rgb.sum().backward()
    torch.testing.assert_close(gpu.rgb.cpu(), cpu.rgb, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(gpu.alpha.cpu(), cpu.alpha, atol=2e-3, rtol=1e-3)
    for p_cpu, p_gpu in zip(params, cuda_params):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, atol=1e-2, rtol=1e-2)
