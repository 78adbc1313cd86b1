"""Losses and regularisers: each is zero where it should be and pulls the right way."""

import pytest
import torch

from vasa3d.face.template import load_template
from vasa3d.losses import (
    dssim, face_adjacency, landmark_reprojection, laplacian_smoothness, masked_l1, mesh_edges,
    neighbour_color_smoothness, project_points)


def test_photometric_losses_vanish_on_identical_images_and_respect_weights():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=gen)
    assert masked_l1(image, image) == 0
    assert dssim(image, image) < 1e-6
    noisy = image.clone()
    noisy[..., :16] = torch.rand(1, 3, 32, 16, generator=gen)
    right_half = torch.zeros(1, 1, 32, 32)
    right_half[..., 16:] = 1
    assert masked_l1(noisy, image) > 0.05 and dssim(noisy, image) > 0.05
    assert masked_l1(noisy, image, right_half) == 0
    assert dssim(noisy, image, right_half) < dssim(noisy, image)


def test_template_adjacency_and_laplacian():
    template = load_template()
    faces = torch.from_numpy(template.faces)
    pairs = face_adjacency(faces)
    counts = torch.bincount(pairs[:, 0], minlength=faces.shape[0])
    assert torch.all(counts == 3)  # closed manifold mesh: three neighbours per triangle
    edges = mesh_edges(faces)
    assert laplacian_smoothness(torch.ones(len(template.vertices), 3) * 0.3, edges) == 0
    bumpy = torch.zeros(len(template.vertices), 3)
    bumpy[0] = 0.01
    assert laplacian_smoothness(bumpy, edges) > 0


def test_colour_smoothness_pulls_an_outlier_towards_its_neighbours():
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])  # a tetrahedron
    pairs = face_adjacency(faces)
    colors = torch.full((4, 3), 0.5)
    colors[0] = 1.0
    colors.requires_grad_()
    loss = neighbour_color_smoothness(colors, torch.arange(4), pairs, 4)
    loss.backward()
    assert loss > 0 and torch.all(colors.grad[0] > 0)  # descending lowers the outlier


def test_landmark_reprojection_is_zero_at_the_projection():
    points = torch.randn(1, 20, 3) * 0.05
    viewmat = torch.eye(4)[None]
    viewmat[0, 2, 3] = 1.0
    K = torch.tensor([[[300.0, 0, 128], [0, 300.0, 128], [0, 0, 1]]])
    target = project_points(points, viewmat, K)
    assert landmark_reprojection(points, target, viewmat, K, 256) < 1e-7
    shifted = landmark_reprojection(points, target + torch.tensor([2.56, 0.0]), viewmat, K, 256)
    torch.testing.assert_close(shifted, torch.tensor(0.01))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_separable_ssim_matches_torchmetrics(backend):
    from torchmetrics.functional.image import structural_similarity_index_measure

    from vasa3d.losses.rendering import ssim_map

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 64, generator=gen)
    b = (a + 0.2 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    _, full = structural_similarity_index_measure(a, b, data_range=1.0, return_full_image=True, reduction="none")
    torch.testing.assert_close(ssim_map(a, b, backend=backend), full[..., 5:-5, 5:-5], atol=2e-5, rtol=0)


def test_compiled_ssim_equals_the_torch_reference_forward_and_backward(compiled_kernels):
    from vasa3d.gaussians.composite_cpp import ssim_map_cpp
    from vasa3d.losses.rendering import _gaussian_window, ssim_map

    gen = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 29, 37, generator=gen, dtype=torch.float64)  # not square, not a multiple of anything
    render = (target + 0.3 * torch.randn(target.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    weight = torch.rand(2, 1, 29, 37, generator=gen, dtype=torch.float64)
    upstream = torch.randn(2, 3, 19, 27, generator=gen, dtype=torch.float64)

    def run(backend):
        out = ssim_map(render, target, backend=backend)
        (grad,) = torch.autograd.grad(out, render, upstream)
        (grad_dssim,) = torch.autograd.grad(dssim(render, target, weight, backend=backend), render)
        return out, grad, grad_dssim

    reference, compiled = run("torch"), run("auto")
    ran = compiled[0].grad_fn.next_functions[0][0]  # under the reshape back to [B, C, ...]
    assert "SSIMMap" in type(ran).__name__  # the compiled path ran
    for ref, got in zip(reference, compiled):
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    # float32, as the fit runs it
    render32, target32 = render.detach().float().requires_grad_(True), target.float()
    (g_ref,) = torch.autograd.grad(ssim_map(render32, target32, backend="torch"), render32, upstream.float())
    (g_cpp,) = torch.autograd.grad(ssim_map(render32, target32), render32, upstream.float())
    torch.testing.assert_close(g_cpp, g_ref, atol=1e-5, rtol=1e-5)
    # the same bits on one thread and on two
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("auto")
        torch.set_num_threads(2)
        two = run("auto")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    # a target that wants a gradient takes the reference, which gives it one; the kernel itself refuses it
    wanting = target.clone().requires_grad_(True)
    out = ssim_map(render, wanting)
    assert torch.autograd.grad(out.sum(), wanting)[0].abs().sum() > 0
    with pytest.raises(ValueError, match="no gradient to the target"):
        ssim_map_cpp(render, wanting, _gaussian_window(11, 1.5, render))


def test_trimmed_l1_ignores_the_worst_pixels_only():
    from vasa3d.losses import trimmed_l1

    target = torch.zeros(1, 3, 10, 10)
    render = torch.full_like(target, 0.1)
    render[..., 0, :5] = 1.0  # a 5% artefact
    assert torch.isclose(trimmed_l1(render, target, trim=0.05), torch.tensor(0.1))
    assert trimmed_l1(render, target, trim=0.0) > 0.14
    weight = torch.ones(1, 1, 10, 10)
    weight[..., 5:, :] = 0  # the trimmed share is taken inside the weighted region
    assert torch.isclose(trimmed_l1(render, target, weight, trim=0.1), torch.tensor(0.1))


def test_teacher_frames_that_miss_their_latent_weigh_less():
    from vasa3d.losses import teacher_frame_weights

    reference = torch.zeros(2, 478, 2)
    reference[:, 263, 0] = 100.0  # inter-ocular distance 100 px
    intended = torch.zeros(2, 478, 2)
    detected = intended.clone()
    detected[1] += 10.0  # the second frame misses by 0.14 IOD
    weights = teacher_frame_weights(detected, intended, reference, tolerance_iod=0.05)
    assert weights[0] == 1.0 and weights[1] < 0.2
