"""The compiled C++ compositor against the tiled torch reference, the dense one and autograd."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from render_reference import composite_dense, random_scene, random_scene3d

from vasa3d.gaussians import composite_cpp as cc
from vasa3d.gaussians import rasterize
from vasa3d.gaussians.composite import TileBins, bin_gaussians, composite_torch

F32, F64 = torch.float32, torch.float64


@pytest.fixture(scope="module", autouse=True)
def _built(compiled_kernels) -> None:
    """Every test here needs the compiled kernels (``conftest.compiled_kernels``)."""


def _scene(n: int, width: int, height: int, seed: int, dtype: torch.dtype, channels: int = 4):
    m2d, conics, opac, colors, radii, depths = random_scene(n, width, height, seed=seed, dtype=dtype)
    return m2d, conics, opac, colors[:, :channels].contiguous(), radii, depths


def _loss_weights(shape_rgb, shape_alpha, dtype, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape_rgb, generator=gen, dtype=dtype), torch.randn(shape_alpha, generator=gen, dtype=dtype)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("width,height,n,channels", [(37, 29, 80, 4), (64, 48, 600, 3), (50, 33, 300, 1),
                                                     (16, 16, 60, 4), (7, 40, 40, 2)])
def test_forward_matches_torch_and_dense(width, height, n, channels, dtype):
    m2d, conics, opac, colors, radii, depths = _scene(n, width, height, n, dtype, channels)
    bins = bin_gaussians(m2d, radii, depths, width, height, 16)
    rgb, alpha = cc.composite_cpp(m2d, conics, opac, colors, bins, width, height)
    assert rgb.shape == (height, width, channels) and alpha.shape == (height, width, 1) and rgb.dtype == dtype
    ref_rgb, ref_alpha = composite_torch(m2d, conics, opac, colors, bins, width, height)
    torch.testing.assert_close(rgb, ref_rgb)
    torch.testing.assert_close(alpha, ref_alpha)
    dense_rgb, dense_alpha = composite_dense(m2d, conics, opac, colors, radii, depths, width, height)
    torch.testing.assert_close(rgb, dense_rgb)
    torch.testing.assert_close(alpha, dense_alpha)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_early_stop_on_a_pile_of_opaque_gaussians(dtype):
    """200 near-opaque Gaussians on one spot: pixels stop after a few, and the tiles stop early."""
    m2d, conics, opac, colors, radii, depths = _scene(200, 40, 36, 11, dtype)
    m2d[:] = torch.tensor([20.0, 18.0], dtype=dtype) + 0.5 * torch.randn(200, 2, dtype=dtype)
    opac[:] = 0.9
    bins = bin_gaussians(m2d, radii, depths, 40, 36, 16)
    out = torch.ops.vasa3d_composite.forward(m2d, conics, opac, colors, bins.tile_offsets, bins.flat_ids,
                                             bins.tiles_x, bins.tiles_y, 16, 40, 36)
    rgb, alpha, t_final, last = out
    centre_tile = (18 // 16) * bins.tiles_x + 20 // 16
    assert 0 < int(last[18, 20]) < 20 < int(bins.tile_offsets[centre_tile + 1] - bins.tile_offsets[centre_tile])
    assert float(t_final.min()) > 1e-4 and float(t_final[18, 20]) < 1e-2
    dense_rgb, dense_alpha = composite_dense(m2d, conics, opac, colors, radii, depths, 40, 36)
    torch.testing.assert_close(rgb, dense_rgb)
    torch.testing.assert_close(alpha, dense_alpha)


@pytest.mark.parametrize("tile_size", [8, 16, 32])
def test_awkward_gaussians_and_tile_sizes(tile_size):
    """Thin rotated ellipses, opacities around 1/255, indefinite conics: the row culling is exact."""
    width, height = 45, 38
    m2d, conics, opac, colors, radii, depths = _scene(300, width, height, 21, F64)
    gen = torch.Generator().manual_seed(4)
    theta = torch.rand(300, generator=gen, dtype=F64) * 3.1416
    sx, sy = 0.4 + 6 * torch.rand(300, generator=gen, dtype=F64), 0.3 + 0.3 * torch.rand(300, generator=gen, dtype=F64)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cov = torch.stack([cos**2 * sx**2 + sin**2 * sy**2, cos * sin * (sx**2 - sy**2), sin**2 * sx**2 + cos**2 * sy**2], -1)
    det = cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2
    conics = torch.stack([cov[:, 2] / det, -cov[:, 1] / det, cov[:, 0] / det], -1)
    radii = torch.ceil(3.33 * torch.sqrt(torch.stack([cov[:, 0], cov[:, 2]], -1))).int()
    opac[:40] = (1 / 255) * (0.9 + 0.2 * torch.rand(40, generator=gen, dtype=F64))
    conics[40:50, 1] = 3 * conics[40:50, 0].abs().sqrt() * conics[40:50, 2].abs().sqrt()  # indefinite
    bins = bin_gaussians(m2d, radii, depths, width, height, tile_size)
    weights = _loss_weights((height, width, 4), (height, width, 1), F64)
    inputs = (m2d, conics, opac, colors)
    outs, grads = _grads(lambda *x: cc.composite_cpp(*x, bins, width, height), inputs, weights)
    ref_outs, ref_grads = _grads(lambda *x: composite_torch(*x, bins, width, height), inputs, weights)
    for ours, ref in zip(outs, ref_outs):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)
    assert outs[1].max() > 0.5
    for ours, ref in zip(grads, ref_grads):
        # torch's where() turns exp(-sigma) = inf on the skipped sigma < 0 side into NaN gradients
        # for the indefinite conics; ours stay finite there
        finite = torch.isfinite(ref)
        assert torch.isfinite(ours).all() and finite[:40].all() and finite[50:].all()
        torch.testing.assert_close(ours[finite], ref[finite], rtol=1e-9, atol=1e-11 * float(ref[finite].abs().max()))


def test_empty_scenes_render_nothing_and_backprop_zeros():
    m2d, conics, opac, colors, radii, depths = _scene(30, 33, 20, 2, F64)
    inputs = [t.clone().requires_grad_() for t in (m2d, conics, opac, colors)]
    bins = bin_gaussians(m2d, torch.zeros_like(radii), depths, 33, 20, 16)  # everything culled
    assert bins.flat_ids.numel() == 0
    rgb, alpha = cc.composite_cpp(*inputs, bins, 33, 20)
    assert rgb.shape == (20, 33, 4) and not rgb.any() and not alpha.any()
    (rgb.sum() + alpha.sum()).backward()
    assert all(t.grad is not None and not t.grad.any() for t in inputs)
    none = TileBins(torch.zeros(bins.tiles_x * bins.tiles_y + 1, dtype=torch.int64),
                    torch.zeros(0, dtype=torch.int64), bins.tiles_x, bins.tiles_y, 16)
    rgb, alpha = cc.composite_cpp(m2d[:0], conics[:0], opac[:0], colors[:0], none, 33, 20)
    assert rgb.shape == (20, 33, 4) and not rgb.any() and not alpha.any()


def _grads(fn, inputs, weights):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    rgb, alpha = fn(*leaves)
    ((rgb * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
    return (rgb.detach(), alpha.detach()), [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("width,height,n,channels", [(37, 29, 150, 4), (48, 40, 500, 3), (20, 20, 40, 1)])
def test_gradients_match_torch_autograd(width, height, n, channels, dtype):
    m2d, conics, opac, colors, radii, depths = _scene(n, width, height, 100 + n, dtype, channels)
    opac[::7] = 1.0  # alphas clamped at 0.999 where these sit on a pixel centre: no gradient through them
    m2d[::7] = torch.floor(m2d[::7]) + 0.5
    bins = bin_gaussians(m2d, radii, depths, width, height, 16)
    weights = _loss_weights((height, width, channels), (height, width, 1), dtype)
    inputs = (m2d, conics, opac, colors)
    outs, grads = _grads(lambda *x: cc.composite_cpp(*x, bins, width, height), inputs, weights)
    ref_outs, ref_grads = _grads(lambda *x: composite_torch(*x, bins, width, height), inputs, weights)
    for ours, ref in zip(outs, ref_outs):
        torch.testing.assert_close(ours, ref)
    for name, ours, ref in zip(("means2d", "conics", "opacities", "colors"), grads, ref_grads):
        scale = float(ref.abs().max())
        assert scale > 0, name
        if dtype == F64:
            torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11 * scale, msg=name)
        else:
            torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-4 * scale, msg=name)


def test_gradcheck_float64():
    m2d, conics, opac, colors, radii, depths = _scene(12, 20, 18, 5, F64)
    bins = bin_gaussians(m2d, radii, depths, 20, 18, 16)
    inputs = [t.clone().requires_grad_() for t in (m2d, conics, opac, colors)]
    assert torch.autograd.gradcheck(lambda *x: cc.composite_cpp(*x, bins, 20, 18), inputs, eps=1e-6, atol=1e-6)


def test_results_do_not_depend_on_the_thread_count():
    m2d, conics, opac, colors, radii, depths = _scene(800, 64, 64, 3, F32)
    bins = bin_gaussians(m2d, radii, depths, 64, 64, 16)
    weights = _loss_weights((64, 64, 4), (64, 64, 1), F32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_grads(lambda *x: cc.composite_cpp(*x, bins, 64, 64), (m2d, conics, opac, colors), weights))
    finally:
        torch.set_num_threads(before)
    for outs, grads in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs + tuple(grads), results[0][0] + tuple(results[0][1])))


@pytest.mark.parametrize("dtype", [F64, F32])
def test_rasterize_cpp_backend_matches_torch_backend(dtype):
    means, quats, scales, opac, colors, viewmats, Ks = random_scene3d(400, dtype=dtype)
    runs = {}
    for backend in ("cpp", "torch"):
        params = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
        out = rasterize(*params, viewmats, Ks, 61, 45, backgrounds=torch.full((3,), 0.25, dtype=dtype),
                        backend=backend)
        assert out.info["backend"] == backend
        w_rgb, w_alpha = _loss_weights(out.rgb.shape, out.alpha.shape, dtype, seed=3)
        depth = torch.where(out.alpha > 0.5, out.depth, torch.zeros_like(out.depth))
        ((out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum() + depth.mean()).backward()
        runs[backend] = (out, [p.grad for p in params], out.info["means2d"].grad)
    (ours, grads, m2d_grad), (ref, ref_grads, ref_m2d_grad) = runs["cpp"], runs["torch"]
    assert float(ref.alpha.detach().max()) > 0.9 and float(ref.alpha.detach().min()) == 0.0
    loose = dict(rtol=1e-9, atol=1e-10) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    for a, b in ((ours.rgb, ref.rgb), (ours.alpha, ref.alpha), (ours.depth, ref.depth)):
        torch.testing.assert_close(a, b, **loose)
    for name, a, b in zip(("means2d", "means", "quats", "scales", "opacities", "colors"),
                          [m2d_grad] + grads, [ref_m2d_grad] + ref_grads):
        scale = float(b.abs().max())
        assert scale > 0, name
        tol = dict(rtol=1e-8, atol=1e-10 * scale) if dtype == F64 else dict(rtol=1e-3, atol=1e-3 * scale)
        torch.testing.assert_close(a, b, msg=name, **tol)


def test_bad_bins_are_rejected():
    m2d, conics, opac, colors, radii, depths = _scene(20, 20, 20, 1, F32)
    bins = bin_gaussians(m2d, radii, depths, 20, 20, 16)
    bad = bins._replace(flat_ids=bins.flat_ids.clone().fill_(20))
    with pytest.raises(RuntimeError, match="out of range"):
        cc.composite_cpp(m2d, conics, opac, colors, bad, 20, 20)
    with pytest.raises(RuntimeError, match="cover"):
        cc.composite_cpp(m2d, conics, opac, colors, bins, 40, 20)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_cached_build_loads_fast_and_can_be_disabled():
    probe = _python("""
        import time
        from vasa3d.gaussians import composite_cpp as cc
        start = time.perf_counter(); ok = cc.is_available(); print(ok, time.perf_counter() - start)
    """)
    ok, seconds = probe.stdout.split()
    assert ok == "True" and float(seconds) < 1.0, probe.stderr
    assert "compiling" not in probe.stderr
    off = _python("from vasa3d.gaussians import composite_cpp as cc; print(cc.is_available(), cc.unavailable_reason())",
                  VASA3D_DISABLE_CPP="1")
    assert off.stdout.strip() == "False disabled by VASA3D_DISABLE_CPP", off.stderr


def test_failed_build_warns_and_falls_back(tmp_path):
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    probe = _python(f"""
        import warnings
        from pathlib import Path
        from vasa3d.gaussians import composite_cpp as cc
        from vasa3d.gaussians.render import resolve_backend
        cc._SOURCE = Path({str(bad)!r})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(cc.is_available(), resolve_backend("auto", __import__("torch").device("cpu")))
        print(caught[0].message)
    """, VASA3D_EXT_DIR=str(tmp_path / "ext"))
    lines = probe.stdout.splitlines()
    assert lines[0] == "False torch", probe.stderr
    assert "pure-torch" in lines[1] and "compiling" in probe.stderr


# ---------------------------------------------------------------- the inference path: C++ binning,
# fused projection + binning + compositing, the avatar's world Gaussians


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("tile_size", [8, 16])
def test_cpp_binning_equals_torch_binning(dtype, tile_size):
    """Same tile lists in the same order, with culled Gaussians, boxes off the image and depth ties."""
    m2d, _, _, _, radii, depths = _scene(500, 70, 45, 13, dtype)
    m2d[:20] -= 60.0  # boxes partly or wholly off the image
    radii[20:40] = 0  # culled
    depths[40:80] = depths[80:120]  # ties: index order decides
    ref = bin_gaussians(m2d, radii, depths, 70, 45, tile_size)
    ours = cc.bin_gaussians_cpp(m2d, radii, depths, 70, 45, tile_size)
    assert (ours.tiles_x, ours.tiles_y, ours.tile_size) == (ref.tiles_x, ref.tiles_y, ref.tile_size)
    assert torch.equal(ours.tile_offsets, ref.tile_offsets) and torch.equal(ours.flat_ids, ref.flat_ids)
    assert ref.flat_ids.numel() > 500
    empty = cc.bin_gaussians_cpp(m2d, torch.zeros_like(radii), depths, 70, 45, tile_size)
    assert empty.flat_ids.numel() == 0 and int(empty.tile_offsets[-1]) == 0


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("tile_size", [8, 16])
def test_tile_cull_drops_only_entries_that_show_nowhere(dtype, tile_size):
    """bin with conics and opacities: each tile's list is a subsequence of the full one; every
    dropped Gaussian is below 1/255 at every pixel centre of that tile; the composited image and
    the gradients are bit for bit those of the full lists."""
    width, height = 75, 53
    m2d, conics, opac, colors, radii, depths = _scene(400, width, height, 21, dtype)
    opac[::3] = torch.linspace(0.5 / 255, 0.05, len(opac[::3]), dtype=dtype)  # faint: a small reach
    # long, thin, tilted ellipses whose radius box is mostly empty
    conics[1::5] = torch.stack([conics[1::5, 0] * 0.05, conics[1::5, 1] * 0.6, conics[1::5, 2] * 4.0], -1)
    radii[1::5] = torch.maximum(radii[1::5], torch.tensor([24, 24], dtype=radii.dtype))
    full = cc.bin_gaussians_cpp(m2d, radii, depths, width, height, tile_size)
    culled = cc.bin_gaussians_cpp(m2d, radii, depths, width, height, tile_size, conics=conics, opacities=opac)
    assert culled.flat_ids.numel() < 0.8 * full.flat_ids.numel()
    ys, xs = torch.meshgrid(torch.arange(tile_size, dtype=dtype), torch.arange(tile_size, dtype=dtype), indexing="ij")
    for tile in range(full.tiles_x * full.tiles_y):
        ours = culled.flat_ids[culled.tile_offsets[tile]:culled.tile_offsets[tile + 1]].tolist()
        ref = full.flat_ids[full.tile_offsets[tile]:full.tile_offsets[tile + 1]].tolist()
        position = {g: i for i, g in enumerate(ref)}
        assert all(g in position for g in ours) and [position[g] for g in ours] == sorted(position[g] for g in ours)
        dropped = torch.tensor(sorted(set(ref) - set(ours)), dtype=torch.long)
        if len(dropped):
            px = (tile % full.tiles_x) * tile_size + xs.flatten() + 0.5
            py = (tile // full.tiles_x) * tile_size + ys.flatten() + 0.5
            dx, dy = px[None] - m2d[dropped, :1], py[None] - m2d[dropped, 1:]
            a, b, c = conics[dropped].unbind(-1)
            sigma = 0.5 * (a[:, None] * dx * dx + c[:, None] * dy * dy) + b[:, None] * dx * dy
            alpha = opac[dropped, None] * torch.exp(-sigma)
            assert bool((alpha < 1 / 255 * (1 - 1e-6)).all()), tile
    weights = _loss_weights((height, width, 4), (height, width, 1), dtype)
    inputs = (m2d, conics, opac, colors)
    outs, grads = _grads(lambda *x: cc.composite_cpp(*x, culled, width, height), inputs, weights)
    ref_outs, ref_grads = _grads(lambda *x: cc.composite_cpp(*x, full, width, height), inputs, weights)
    assert float(outs[1].max()) > 0.5
    for ours, ref in zip((*outs, *grads), (*ref_outs, *ref_grads)):
        assert torch.equal(ours, ref)
    with pytest.raises(ValueError, match="both"):
        cc.bin_gaussians_cpp(m2d, radii, depths, width, height, tile_size, conics=conics)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_fused_forward_equals_the_autograd_path(dtype):
    """rasterize without autograd (one fused C++ call over the cameras) against the autograd path
    (torch projection, binning, compositing) and the pure-torch backend: images, depth and projection."""
    means, quats, scales, opac, colors, viewmats, Ks = random_scene3d(400, seed=3, dtype=dtype)
    opac[:30] = 0.5 / 255  # culled before binning: may not change a pixel
    bg = torch.tensor([0.2, 0.5, 1.0], dtype=dtype)
    with torch.no_grad():
        fused = rasterize(means, quats, scales, opac, colors, viewmats, Ks, 64, 48, backgrounds=bg, backend="cpp")
    grads = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
    split = rasterize(*grads, viewmats, Ks, 64, 48, backgrounds=bg, backend="cpp")
    reference = rasterize(*grads, viewmats, Ks, 64, 48, backgrounds=bg, backend="torch")
    assert fused.rgb.shape == (2, 48, 64, 3) and fused.rgb.dtype == dtype
    assert fused.alpha.max() > 0.9 and fused.alpha.min() == 0.0  # covered and empty pixels
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == F32 else {"atol": 1e-10, "rtol": 1e-9}
    for other in (split, reference):
        for name in ("rgb", "alpha", "depth"):
            torch.testing.assert_close(getattr(fused, name), getattr(other, name).detach(), **tol)
    visible = split.info["radii"] > 0
    culled = (split.info["radii"] > 0).all(-1) & ~(fused.info["radii"] > 0).all(-1)
    assert culled.any() and bool((opac[None].expand_as(culled)[culled] < 1 / 255).all())
    keep = visible.all(-1) & ~culled
    assert torch.equal(fused.info["radii"][keep], split.info["radii"][keep])
    for name in ("means2d", "conics"):
        torch.testing.assert_close(fused.info[name][keep], split.info[name].detach()[keep], **tol)
    torch.testing.assert_close(fused.info["depths"], split.info["depths"].detach(), **tol)
    assert set(fused.info["stage_ms"]) == {"projection", "binning", "compositing"}


def test_fused_forward_handles_empty_views_and_no_background():
    means, quats, scales, opac, colors, viewmats, Ks = random_scene3d(50)
    viewmats[1, 2, 3] = -5.0  # the second camera has everything behind it
    with torch.no_grad():
        out = rasterize(means, quats, scales, opac, colors, viewmats, Ks, 40, 30, backend="cpp")
    assert out.alpha[0].max() > 0.5
    assert out.alpha[1].abs().max() == 0 and out.rgb[1].abs().max() == 0 and out.depth[1].abs().max() == 0


def test_cpp_projection_forward_and_backward_equal_torch():
    """project_cpp against project_gaussians(covariance_from_quat_scale(...)) with autograd, float64,
    with Gaussians near the clamped border of the Jacobian, behind the camera and unnormalised quats."""
    from vasa3d.gaussians.projection import covariance_from_quat_scale, project_gaussians

    means, quats, scales, _, _, viewmats, Ks = random_scene3d(300, seed=9, dtype=F64)
    means[:20, 0] += 2.5  # far off to the side: the Jacobian's clamp is active, some still visible
    means[20:25, 2] = -4.0  # behind the camera
    quats = quats * (0.5 + torch.rand(300, 1, dtype=F64))
    inputs = [t.clone().requires_grad_() for t in (means, quats, scales)]
    m2d, conics, depths, radii = cc.project_cpp(*inputs, viewmats, Ks, 64, 48, 0.3, 0.01, 100.0)
    ref_inputs = [t.clone().requires_grad_() for t in (means, quats, scales)]
    ref = project_gaussians(ref_inputs[0], covariance_from_quat_scale(ref_inputs[1], ref_inputs[2]), viewmats, Ks,
                            64, 48, 0.3, 0.01, 100.0)
    assert torch.equal(radii, ref.radii)
    visible = (radii > 0).all(-1)
    assert 100 < int(visible.sum()) < 600 and not visible[:, 20:25].any()
    torch.testing.assert_close(m2d, ref.means2d)
    torch.testing.assert_close(conics[visible], ref.conics[visible])
    torch.testing.assert_close(depths, ref.depths)
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(t.shape, generator=gen, dtype=F64) * visible[..., None] if t.dim() == 3
               else torch.randn(t.shape, generator=gen, dtype=F64) * visible for t in (m2d, conics, depths)]
    ours = torch.autograd.grad(sum((o * w).sum() for o, w in zip((m2d, conics, depths), weights)), inputs)
    theirs = torch.autograd.grad(sum((o * w).sum() for o, w in zip((ref.means2d, ref.conics, ref.depths), weights)),
                                 ref_inputs)
    for name, a, b in zip(("means", "quats", "scales"), ours, theirs):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * float(b.abs().max()), msg=name)
