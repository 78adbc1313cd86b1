"""Free viewpoint: wide-pose metrics, the teacher's completion of what the portrait hides, the subject-only matte."""

import math

import numpy as np
import pytest
import torch

from vasa3d.metrics.wide_pose import (Turntable, frontal_camera, high_frequency_energy, labelled_strip, mirror_psnr,
                                      per_yaw_markdown, render_turntable, wide_pose_metrics)
from vasa3d.teachers.completion import (COMPLETED, GUESSED, buried, complete_colors, seen_weights, smooth_fill,
                                        visible_fraction)

PORTRAIT_VIEW = torch.tensor([[1.0, 0, 0, 0.01], [0, -1, 0, 0.02], [0, 0, -1, 0.5], [0, 0, 0, 1]])
K = torch.tensor([[300.0, 0, 128], [0, 300, 128], [0, 0, 1]])


def _gaussians(means, colors):
    n = means.shape[0]
    return {"means": means, "quats": torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).contiguous(),
            "scales": torch.full((n, 3), 0.01), "opacities": torch.full((n,), 0.95), "colors": colors}


def _symmetric_head(n=400, asymmetric=False):
    gen = torch.Generator().manual_seed(0)
    half = torch.randn(n // 2, 3, generator=gen) * torch.tensor([0.05, 0.07, 0.06])
    half[:, 0] = half[:, 0].abs() + 0.005
    means = torch.cat([half, half * torch.tensor([-1.0, 1, 1])])
    colors = torch.rand(n // 2, 3, generator=gen).repeat(2, 1)
    if asymmetric:
        colors[n // 2:] = torch.tensor([0.1, 0.1, 0.9])  # one side painted, the other a flat smear
    return _gaussians(means, colors)


def test_frontal_camera_is_on_the_symmetry_axis_at_the_portrait_distance():
    view, intrinsics = frontal_camera(PORTRAIT_VIEW, K, 128, zoom=1.0)
    distance = (-(PORTRAIT_VIEW[:3, :3].T @ PORTRAIT_VIEW[:3, 3])).norm()
    assert view[2, 3] == pytest.approx(float(distance))
    point = torch.tensor([0.03, 0.02, 0.05])
    mirrored = point * torch.tensor([-1.0, 1, 1])
    project = lambda p: (intrinsics @ (view[:3, :3] @ p + view[:3, 3]))[:2] / (view[:3, :3] @ p + view[:3, 3])[2]  # noqa: E731
    a, b = project(point), project(mirrored)
    assert float(a[0]) - 64 == pytest.approx(64 - float(b[0]), abs=1e-4) and float(a[1]) == pytest.approx(float(b[1]), abs=1e-4)
    assert project(torch.zeros(3)).tolist() == pytest.approx([64.0, 64.0])
    assert intrinsics[0, 0] == pytest.approx(300 * 128 / 256)


def test_mirror_consistency_separates_a_symmetric_head_from_a_smeared_one():
    none = torch.zeros(400, dtype=torch.bool)
    symmetric = render_turntable(_symmetric_head(), none, PORTRAIT_VIEW, K, 96, yaws=(-45.0, 0.0, 45.0))
    smeared = render_turntable(_symmetric_head(asymmetric=True), none, PORTRAIT_VIEW, K, 96, yaws=(-45.0, 0.0, 45.0))
    good, bad = mirror_psnr(symmetric), mirror_psnr(smeared)
    assert math.isnan(good[1]) and float(good[0]) == pytest.approx(float(good[2]))  # the pair is scored once each way
    assert float(good[0]) > 35 and float(bad[0]) < float(good[0]) - 15


def test_high_frequency_energy_sees_speckles_only_inside_the_region():
    gen = torch.Generator().manual_seed(1)
    smooth = torch.full((1, 3, 32, 32), 0.5)
    speckled = smooth + 0.2 * (torch.rand(1, 3, 32, 32, generator=gen) > 0.9)
    region = torch.zeros(1, 1, 32, 32)
    region[..., :16] = 1
    assert float(high_frequency_energy(smooth, region)) < 1e-10
    assert float(high_frequency_energy(speckled, region)) > 1e-3
    assert float(high_frequency_energy(speckled, torch.zeros_like(region))) == 0


class _Embedder:
    """A stand-in for dlib: the embedding is the image's mean colour (None for an all-white image)."""

    def embed(self, image):
        mean = image.mean(dim=(1, 2))
        return None if bool((mean > 0.99).all()) else mean.double().numpy()


def test_summary_takes_the_worse_side_and_counts_missed_faces():
    yaws = (-60.0, -45.0, 0.0, 45.0, 60.0)
    rgb = torch.full((5, 3, 16, 16), 0.5)
    rgb[1, 0] = 0.9  # -45: another colour, a lower cosine
    rgb[0] = 1.0  # -60: dlib finds no face
    turntable = Turntable(yaws, rgb, torch.ones(5, 1, 16, 16), torch.zeros(5, 1, 16, 16))
    found = torch.tensor([False, True, True, True, True])
    detect = lambda frames: torch.where(found[:, None, None], torch.zeros(5, 478, 3), torch.full((5, 478, 3), math.nan))  # noqa: E731
    metrics = wide_pose_metrics(turntable, torch.full((3, 16, 16), 0.5), _Embedder(), detect)
    summary = metrics["summary"]
    assert summary["found_45"] == 1.0 and summary["found_60"] == pytest.approx(0.8)
    assert summary["id_45"] < 0.99 and summary["id_45"] == pytest.approx(metrics["per_yaw"][1]["identity_cos"])
    assert math.isnan(summary["id_60"])  # a side with no face cannot pass
    assert "no face" in per_yaw_markdown(metrics)
    assert labelled_strip(turntable, metrics).shape == (16, 80, 3)


def test_seen_weights_follow_how_squarely_the_portrait_saw_the_surface():
    normals = torch.tensor([[0.0, 0, 1], [1.0, 0, 0], [0, 0, -1], [0.0, 0, 1]])
    points = torch.zeros(4, 3)
    inside = torch.tensor([True, True, True, False])
    seen = seen_weights(normals, points, inside, PORTRAIT_VIEW)
    assert seen.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=0.05)


def _regions(n, **named):
    regions = {name: torch.zeros(n, dtype=torch.bool) for name in ("skull", "ears", "neck", "face")}
    for name, index in named.items():
        regions[name][index] = True
    return regions


def test_completion_mirrors_the_seen_side_and_fills_hair_from_many_neighbours():
    # four face points (two seen on the right, their mirrors unseen) and a hair patch: seen red and blue in
    # equal numbers, one unseen hair point at the back, nearest to a red one
    face = torch.tensor([[0.03, 0.0, 0.08], [0.04, 0.01, 0.07], [-0.03, 0.0, 0.08], [-0.04, 0.01, 0.07]])
    hair = torch.cat([torch.tensor([[0.0, 0.10, 0.02 * i] for i in range(-4, 4)]), torch.tensor([[0.0, 0.10, -0.12]])])
    means = torch.cat([face, hair])
    colors = torch.cat([torch.tensor([[0.8, 0.6, 0.5]] * 2 + [[0.0, 1.0, 0.0]] * 2),
                        torch.tensor([[1.0, 0, 0], [0, 0, 1.0]] * 4 + [[0.0, 1.0, 0.0]])])
    seen = torch.tensor([1.0, 1.0, 0.0, 0.0] + [1.0] * 8 + [0.0])
    regions = _regions(len(means), face=slice(0, 4), skull=slice(4, None))
    out, reliability = complete_colors(means, colors, seen, regions, hair_k=8)
    torch.testing.assert_close(out[2:4], colors[0:2])  # the hidden cheek is the mirror of the seen one
    assert reliability[:4].tolist() == pytest.approx([1.0, 1.0, COMPLETED, COMPLETED])
    back = out[-1]
    assert back[1] < 0.01 and back[0] > 0.2 and back[2] > 0.2  # a blend of the visible hair, not the nearest one
    assert float(reliability[-1]) == pytest.approx(GUESSED)


def test_skull_buried_under_the_face_takes_the_face_colour():
    means = torch.tensor([[0.0, 0.0, 0.08], [0.0, 0.0, 0.07], [0.0, 0.12, 0.0]])
    normals = torch.tensor([[0.0, 0, 1], [0.0, 0, 1], [0.0, 1, 0]])
    surface = torch.tensor([True, False, False])
    under, host = buried(means, normals, surface, candidates=~surface)
    assert under.tolist() == [False, True, False] and int(host[1]) == 0


def test_visible_fraction_sees_through_nothing():
    means = torch.tensor([[0.0, 0, 0.05], [0.0, 0, 0.0], [0.1, 0, 0.0]])  # the second hides behind the first
    g = _gaussians(means, torch.full((3, 3), 0.5))
    g["scales"] = torch.tensor([[0.03] * 3, [0.008] * 3, [0.03] * 3])  # the front one covers the hidden one
    g["opacities"] = torch.full((3,), 0.99)
    seen = visible_fraction(g, PORTRAIT_VIEW, K, 256, backend="torch", candidates=torch.tensor([True, False, True]))
    assert float(seen[0]) == pytest.approx(1.0) and float(seen[2]) == pytest.approx(1.0) and float(seen[1]) < 0.05


def test_smooth_fill_weights_by_distance():
    points = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    values = torch.tensor([[0.0], [1.0]])
    filled = smooth_fill(torch.tensor([[0.1, 0, 0]]), points, values, k=2)
    assert 0.0 < float(filled) < 0.5


def test_head_region_keeps_only_the_chosen_subject():
    from datamodules.portrait import default_portrait
    from vasa3d.face import analyze_portrait
    from vasa3d.face.region import head_region

    analysis = analyze_portrait(default_portrait(), crop_size=128)
    plain = head_region(analysis)
    mask = analysis.mask.copy()
    mask[:20, :12] = 1.0  # a neighbour's head at the top left corner, not touching the subject
    mask[-12:, :] = 1.0  # shoulders and a neighbour's clothes across the bottom
    crowded_analysis = type(analysis)(**{**vars(analysis), "mask": mask})
    crowded = head_region(crowded_analysis)
    assert crowded[:20, :12].sum() == 0
    assert head_region(crowded_analysis, subject_only=False)[:20, :12].sum() > 100  # the earlier region took it in
    chin_x = analysis.landmarks[152, 0]
    columns = np.abs(np.arange(128) - chin_x) > 0.7 * abs(analysis.landmarks[454, 0] - analysis.landmarks[234, 0])
    assert crowded[-6:, columns].sum() == 0  # nothing beside the neck below the face
    assert np.abs(crowded - plain)[:100].mean() < 0.02  # the subject's own head is untouched
