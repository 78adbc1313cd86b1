"""Tests for the head template asset and its generator."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mediapipe.python.solutions import face_mesh_connections as fmc

from vasa3d.face.template import REGION_NAMES, HeadTemplate, load_template, save_template

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_template.py"


@pytest.fixture(scope="module")
def template() -> HeadTemplate:
    return load_template()


def directed_edges(faces: np.ndarray) -> np.ndarray:
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def vertex_normals(template: HeadTemplate) -> np.ndarray:
    corners = template.vertices[template.faces].astype(np.float64)
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros((len(template.vertices), 3))
    for k in range(3):
        np.add.at(normals, template.faces[:, k], face_normals)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def test_asset_loads_with_documented_shapes(template: HeadTemplate) -> None:
    assert template.vertices.dtype == np.float32 and template.vertices.shape[1] == 3
    assert template.faces.dtype == np.int64 and template.faces.shape[1] == 3
    assert 2000 <= len(template.vertices) <= 4000
    assert template.faces.min() == 0 and template.faces.max() == len(template.vertices) - 1
    assert template.iris_points.shape == (10, 3)
    landmarks = template.landmarks()
    assert landmarks.shape == (478, 3)
    np.testing.assert_array_equal(landmarks[:468], template.vertices[:468])
    assert load_template() is template  # cached
    assert SCRIPT.parent.parent.joinpath("vasa3d/face/assets/head_template.npz").stat().st_size < 1_000_000


def test_mesh_is_closed_manifold_genus_zero(template: HeadTemplate) -> None:
    directed = directed_edges(template.faces)
    assert max(Counter(map(tuple, directed)).values()) == 1, "a directed edge repeats: inconsistent winding"
    undirected = Counter(map(tuple, np.sort(directed, axis=1)))
    assert set(undirected.values()) == {2}, "every edge must border exactly two triangles"
    euler = len(template.vertices) - len(undirected) + len(template.faces)
    assert euler == 2
    corners = template.vertices[template.faces].astype(np.float64)
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    assert areas.min() > 1e-8, "degenerate triangle"


def test_mesh_faces_outward(template: HeadTemplate) -> None:
    corners = template.vertices[template.faces].astype(np.float64)
    volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0
    assert 0.003 < volume < 0.008  # cubic metres: a head and neck holds a few litres
    normals = vertex_normals(template)
    assert normals[1, 2] > 0.7  # nose tip looks toward the viewer
    assert normals[np.argmax(template.vertices[:, 1]), 1] > 0.7  # crown looks up
    assert normals[np.argmin(template.vertices[:, 2]), 2] < -0.7  # back of the head looks back


def test_landmark_i_is_vertex_i(template: HeadTemplate) -> None:
    face = template.faces[template.regions["face"]]
    assert face.max() < 468
    face_edges = {tuple(e) for e in np.sort(directed_edges(face), axis=1)}
    assert face_edges == {tuple(sorted(e)) for e in fmc.FACEMESH_TESSELATION}
    euler = 468 - len(face_edges) + len(face)
    assert euler == -2  # a sphere with four holes: face oval, two eyes, mouth
    v = template.vertices
    assert np.argmax(v[:468, 2]) in (1, 4)  # the nose tip is the frontmost point
    assert np.argmin(v[:468, 1]) == 152  # chin
    assert v[263, 0] > 0 > v[33, 0]  # +x is the subject's left
    np.testing.assert_allclose(v[263] * [-1, 1, 1], v[33], atol=1e-6)  # symmetric
    assert np.linalg.norm(v[234] - v[454]) == pytest.approx(0.15, abs=1e-4)
    iris = template.iris_points
    assert iris[5, 0] > 0 > iris[0, 0]  # 473 is the left iris centre, 468 the right
    assert np.linalg.norm(iris[0] - v[[33, 133]].mean(axis=0)) < 0.01


def test_origin_is_inside_the_head(template: HeadTemplate) -> None:
    v = template.vertices
    assert abs(v[:, 0].max() + v[:, 0].min()) < 0.005
    assert v[:, 2].min() < -0.08 and v[:, 2].max() > 0.1  # back of the head and nose tip
    assert v[:, 1].max() > 0.1 and v[:, 1].min() < -0.15  # crown and neck


def test_regions_are_named_non_empty_and_in_range(template: HeadTemplate) -> None:
    assert set(template.regions) == set(REGION_NAMES)
    for name, indices in template.regions.items():
        assert indices.dtype == np.int64 and len(indices) > 0, name
        assert indices.min() >= 0 and indices.max() < len(template.faces), name
        assert len(np.unique(indices)) == len(indices), name
    assert len(template.regions["face"]) == 852
    shell = np.concatenate([template.regions[n] for n in ("skull", "ears", "neck")])
    covered = np.concatenate([shell, template.regions["face"], template.regions["mouth_interior"]])
    eyes = np.concatenate([template.regions["left_eye"], template.regions["right_eye"]])
    assert len(np.union1d(covered, eyes)) == len(template.faces)  # every triangle has a region
    v = template.vertices
    assert v[template.region_vertex_mask("left_eye"), 0].min() > 0
    assert v[template.region_vertex_mask("right_eye"), 0].max() < 0
    assert v[template.faces[template.regions["neck"]]].mean(axis=1)[:, 1].max() < v[152, 1]  # below the chin
    ears = v[template.region_vertex_mask("ears")]
    assert np.abs(ears[:, 0]).min() > 0.05  # on the sides of the head
    pocket = template.region_vertex_mask("mouth_interior")
    pocket[:468] = False  # the pocket's rim is the inner lip line
    assert v[pocket, 2].max() < v[[13, 14], 2].min()  # the pocket goes into the head


def test_region_vertex_mask(template: HeadTemplate) -> None:
    mask = template.region_vertex_mask("lips")
    assert mask.shape == (len(template.vertices),) and mask.dtype == bool
    assert mask[[13, 14, 61, 291]].all() and not mask[1]
    with pytest.raises(KeyError, match="known regions"):
        template.region_vertex_mask("tail")


def test_save_load_round_trip(template: HeadTemplate, tmp_path: Path) -> None:
    path = tmp_path / "copy.npz"
    save_template(template, path)
    copy = load_template(path)
    np.testing.assert_array_equal(copy.vertices, template.vertices)
    np.testing.assert_array_equal(copy.faces, template.faces)
    np.testing.assert_array_equal(copy.iris_points, template.iris_points)
    assert {k: v.tolist() for k, v in copy.regions.items()} == {k: v.tolist() for k, v in template.regions.items()}
    with pytest.raises(FileNotFoundError, match="build_template.py"):
        load_template(tmp_path / "missing.npz")


def test_generator_reproduces_the_asset(template: HeadTemplate) -> None:
    spec = importlib.util.spec_from_file_location("build_template", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = module.build_template()
    assert rebuilt.faces.tolist() == template.faces.tolist(), "asset is stale: run scripts/build_template.py"
    np.testing.assert_allclose(rebuilt.vertices, template.vertices, atol=1e-6)
    np.testing.assert_allclose(rebuilt.iris_points, template.iris_points, atol=1e-6)


def test_bound_to_marks_the_gaussians_of_the_named_regions():
    import torch

    template = load_template()
    binding = torch.tensor([int(template.regions["nose"][0]), int(template.regions["ears"][0]),
                            int(template.regions["ears"][-1]), int(template.regions["skull"][0])])
    assert template.bound_to(binding, "nose").tolist() == [True, False, False, False]
    assert template.bound_to(binding, "nose", "ears").tolist() == [True, True, True, False]
    with pytest.raises(KeyError, match="unknown template region"):
        template.bound_to(binding, "tail")
