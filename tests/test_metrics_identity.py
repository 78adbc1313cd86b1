"""dlib identity similarity: the same portrait matches, noise and a face-less image are reported as no face."""

import numpy as np
import pytest
import torch
from skimage import data

from vasa3d.metrics.identity import DlibFaceEmbedder, arcface_similarity, identity_similarity


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def embedder():
    return DlibFaceEmbedder()


@pytest.fixture(scope="module")
def portrait():
    return _tensor(data.astronaut())


def test_same_portrait_shifted_and_brightened_is_the_same_person(embedder, portrait):
    shifted = torch.roll(portrait, shifts=(4, 6), dims=(1, 2))
    brightened = (portrait * 1.1 + 0.02).clamp(0, 1)
    results = identity_similarity(torch.stack([portrait, shifted, brightened]), portrait, embedder)
    assert results["identity_cos"].value > 0.98
    assert results["identity_l2"].value < 0.4  # dlib: same person < 0.6
    assert results["identity_l2"].extra["n_no_face"] == 0
    assert results["identity_cos"].extra["per_frame"][0] == pytest.approx(1.0)


def test_frames_without_a_face_are_nan_and_counted(embedder, portrait):
    noise = torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(0))
    coffee = _tensor(data.coffee())[:, :400, :512]
    coffee = torch.nn.functional.pad(coffee, (0, 0, 0, 112))
    results = identity_similarity(torch.stack([portrait, noise, coffee]), portrait, embedder)
    cos = results["identity_cos"]
    assert cos.extra["n_no_face"] == 2 and np.isnan(cos.extra["per_frame"][1:]).all()
    assert cos.value == pytest.approx(1.0) and "no face in 2/3 frames" in cos.reason
    only_noise = identity_similarity(noise[None], portrait, embedder)["identity_l2"]
    assert np.isnan(only_noise.value) and "no face found" in only_noise.reason


def test_reference_without_a_face_is_not_measured(embedder, portrait):
    noise = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(1))
    result = identity_similarity(portrait[None], noise, embedder)["identity_cos"]
    assert result.value is None and "reference" in result.reason


def test_arcface_without_a_model_folder_is_not_measured(monkeypatch, tmp_path, portrait):
    monkeypatch.delenv("VASA3D_ARCFACE_DIR", raising=False)
    assert "not configured" in arcface_similarity(portrait[None], portrait).reason
    missing = arcface_similarity(portrait[None], portrait, tmp_path / "buffalo_l")
    assert missing.value is None and "missing" in missing.reason
    (tmp_path / "buffalo_l").mkdir()
    (tmp_path / "buffalo_l" / "w600k_r50.onnx").write_bytes(b"")
    installed = arcface_similarity(portrait[None], portrait, tmp_path / "buffalo_l")
    try:
        import insightface  # noqa: F401
    except ImportError:
        assert installed.value is None and "insightface not installed" in installed.reason
