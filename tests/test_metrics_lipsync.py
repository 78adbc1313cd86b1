"""Lip-sync: lagged mouth-opening correlation, the energy-envelope offset detector, lip landmark error, LSE."""

import numpy as np
import pytest

from vasa3d.metrics.landmarks import LIP_INDICES
from vasa3d.metrics.lipsync import (
    audio_energy_envelope,
    av_offset_energy,
    lip_landmark_error,
    lse,
    mouth_opening_correlation,
)


def _mouth_curve(frames=120, seed=0):
    rng = np.random.default_rng(seed)
    curve = np.convolve(rng.random(frames + 8), np.ones(5) / 5, mode="valid")[:frames]
    return curve - curve.min()


def test_mouth_curve_against_itself_delayed_three_frames_gives_lag_three():
    reference = _mouth_curve()
    delayed = np.concatenate([np.full(3, reference[0]), reference[:-3]])  # delayed[t] = reference[t - 3]
    result = mouth_opening_correlation(reference, delayed, max_lag=6)
    assert result.extra["best_lag"] == 3 and result.extra["best_corr"] == pytest.approx(1.0)
    assert result.value < 0.9
    assert mouth_opening_correlation(reference, reference).value == pytest.approx(1.0)
    early = mouth_opening_correlation(reference, np.concatenate([reference[2:], reference[-2:]]), max_lag=6)
    assert early.extra["best_lag"] == -2


def test_energy_offset_detector_finds_a_three_frame_delay():
    fps, sample_rate, frames = 25, 16000, 150
    envelope = _mouth_curve(frames, seed=1) + 0.05
    rng = np.random.default_rng(2)
    samples_per_frame = sample_rate // fps
    audio = rng.standard_normal(frames * samples_per_frame) * np.repeat(envelope, samples_per_frame)
    measured = audio_energy_envelope(audio, sample_rate, fps)
    assert np.corrcoef(measured, envelope)[0, 1] > 0.95
    mouth = np.concatenate([np.full(3, envelope[0]), envelope[:-3]])  # the mouth trails the audio by 3 frames
    result = av_offset_energy(audio, sample_rate, mouth, fps, max_offset=8)
    assert result.value == 3
    assert result.extra["confidence"] > 0.3 and result.extra["peak_corr"] > 0.9
    in_sync = av_offset_energy(audio, sample_rate, envelope, fps)
    assert in_sync.value == 0


def test_lip_landmark_error_uses_only_lip_points_and_iod():
    rng = np.random.default_rng(0)
    target = rng.random((4, 478, 2)) * 100
    target[:, 33], target[:, 263] = (20.0, 50.0), (80.0, 50.0)  # IOD 60 px
    pred = target.copy()
    pred[:, list(LIP_INDICES)] += (6.0, 0.0)
    others = [i for i in range(478) if i not in LIP_INDICES]
    pred[:, others] += 50.0  # non-lip errors must not count
    assert lip_landmark_error(pred, target).value == pytest.approx(0.1)
    assert len(LIP_INDICES) == 40


def test_lip_indices_match_mediapipe():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS

    assert set(LIP_INDICES) == {i for edge in FACEMESH_LIPS for i in edge}


def test_lse_without_syncnet_is_not_measured(monkeypatch):
    monkeypatch.delenv("VASA3D_SYNCNET_WEIGHTS", raising=False)
    results = lse(None, np.zeros(16000), 16000)
    assert results["lse_c"].value is None and results["lse_d"].value is None
    assert results["lse_c"].reason.startswith("SyncNet weights path not configured")


def test_detected_landmarks_on_the_astronaut_and_a_faceless_frame():
    import torch
    from skimage import data

    from vasa3d.metrics.landmarks import detect_landmarks, inter_ocular_distance, mouth_opening

    face = torch.from_numpy(data.astronaut()[20:240, 110:330].copy()).permute(2, 0, 1).float() / 255
    noise = torch.rand(3, 220, 220, generator=torch.Generator().manual_seed(0))
    landmarks = detect_landmarks(torch.stack([face, noise]), video=False)
    assert landmarks.shape == (2, 478, 2) and np.isnan(landmarks[1]).all()
    assert 40 < inter_ocular_distance(landmarks[0]) < 90  # the face is ~90 px wide in this crop
    assert landmarks[0, 33, 0] < landmarks[0, 263, 0]  # 33: the subject's right eye, on the image's left
    assert 0 <= mouth_opening(landmarks[0]) < 0.3
