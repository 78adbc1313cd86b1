"""Losses and regularisers: each is zero where it should be and pulls the right way."""

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


def test_separable_ssim_matches_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    from vasa3d.losses.rendering import ssim_map

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 64, 64, generator=gen)
    b = (a + 0.2 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    _, full = structural_similarity_index_measure(a, b, data_range=1.0, return_full_image=True, reduction="none")
    torch.testing.assert_close(ssim_map(a, b), full[..., 5:-5, 5:-5], atol=2e-5, rtol=0)


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
