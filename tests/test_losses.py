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
