"""Lip-sync metrics: landmark lip error, mouth-opening correlation, a weight-free audio-mouth offset.

- ``lip_landmark_error``: mean L2 over mediapipe's 40 lip points, divided by the IOD (needs a
  reference video's landmarks, e.g. the teacher's).
- ``mouth_opening_correlation``: Pearson correlation of two mouth-opening curves at lag 0, and the
  best lag within +-``max_lag`` frames.
- ``av_offset_energy``: OUR weight-free stand-in for a sync detector: the cross-correlation of the
  audio's RMS energy envelope with the mouth opening, over frame lags; gives the offset and a
  confidence. It is not SyncNet and its numbers are not LSE-C/LSE-D.
- ``lse``: LSE-C / LSE-D need SyncNet weights; without them "not measured" with the reason.

Lag convention everywhere: ``lag = L`` compares ``a[t]`` with ``b[t + L]``; a positive lag means the
second signal (the mouth) comes ``L`` frames *after* the first (the reference curve or the audio).
"""

from __future__ import annotations

import os

import numpy as np
from torch import Tensor

from vasa3d.metrics import MetricResult
from vasa3d.metrics.landmarks import LIP_INDICES, landmark_distance

SYNCNET_WEIGHTS_ENV = "VASA3D_SYNCNET_WEIGHTS"


def _curve(values: np.ndarray | Tensor, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    array = array.astype(np.float64).reshape(-1)
    if array.size < 3:
        raise ValueError(f"{name}: needs at least 3 frames; got {array.size}")
    return array


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def lagged_correlation(a: np.ndarray | Tensor, b: np.ndarray | Tensor, max_lag: int) -> dict[int, float]:
    """Pearson correlation of ``a[t]`` with ``b[t + lag]`` over the overlap, for each lag in ``[-max_lag, max_lag]``."""
    a, b = _curve(a, "a"), _curve(b, "b")
    length = min(a.size, b.size)
    a, b = a[:length], b[:length]
    max_lag = min(max_lag, length - 3)
    correlations = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            correlations[lag] = _pearson(a[: length - lag], b[lag:])
        else:
            correlations[lag] = _pearson(a[-lag:], b[: length + lag])
    return correlations


def _best_lag(correlations: dict[int, float]) -> tuple[int, float]:
    finite = {lag: value for lag, value in correlations.items() if np.isfinite(value)}
    if not finite:
        return 0, float("nan")
    # Ties (e.g. periodic curves) go to the smallest |lag|.
    lag = max(finite, key=lambda key: (round(finite[key], 9), -abs(key)))
    return lag, finite[lag]


def lip_landmark_error(pred_landmarks: np.ndarray | Tensor, target_landmarks: np.ndarray | Tensor) -> MetricResult:
    """Mean L2 over the 40 lip landmarks ``[T, 478, 2]`` (px), divided by the target's IOD (lower is better)."""
    return landmark_distance(pred_landmarks, target_landmarks, indices=LIP_INDICES, prefix="lip")["lip_iod"]


def mouth_opening_correlation(
    reference_opening: np.ndarray | Tensor, generated_opening: np.ndarray | Tensor, max_lag: int = 5
) -> MetricResult:
    """Pearson correlation of two mouth-opening curves ``[T]`` (higher is better).

    ``value`` is the correlation at lag 0; ``extra`` holds ``best_lag`` (frames the generated mouth
    trails the reference by; negative = leads) and ``best_corr`` within ``+-max_lag``.
    """
    correlations = lagged_correlation(reference_opening, generated_opening, max_lag)
    lag, best = _best_lag(correlations)
    return MetricResult(correlations[0], extra={"best_lag": lag, "best_corr": best, "max_lag": max_lag})


def audio_energy_envelope(audio: np.ndarray | Tensor, sample_rate: int, fps: float, num_frames: int | None = None) -> np.ndarray:
    """RMS energy of mono ``audio`` ``[S]`` in each video frame's window ``[t/fps, (t+1)/fps)``, ``[T]``."""
    samples = _curve(audio, "audio")
    samples_per_frame = sample_rate / fps
    if num_frames is None:
        num_frames = int(samples.size // samples_per_frame)
    envelope = np.zeros(num_frames)
    for frame in range(num_frames):
        chunk = samples[int(round(frame * samples_per_frame)) : int(round((frame + 1) * samples_per_frame))]
        envelope[frame] = np.sqrt(np.mean(chunk**2)) if chunk.size else np.nan
    return envelope


def av_offset_energy(
    audio: np.ndarray | Tensor, sample_rate: int, mouth_opening: np.ndarray | Tensor, fps: float, max_offset: int = 10
) -> MetricResult:
    """Weight-free audio-visual offset: where the audio energy best correlates with the mouth opening.

    Not SyncNet, and not LSE: it sees only loudness vs opening, so it is a coarse check that the
    mouth moves with the speech and on time.

    Args:
        audio: mono waveform ``[S]``.
        sample_rate: audio samples per second.
        mouth_opening: per-frame opening ``[T]`` (e.g. ``landmarks.mouth_opening``).
        fps: video frames per second.
        max_offset: lags searched, ``+-`` frames.

    Returns:
        ``value``: the offset in frames (positive = the mouth trails the audio); ``extra``:
        ``confidence`` (peak correlation minus the median over lags, as SyncNet's confidence is peak
        vs median), ``peak_corr`` and the correlation per lag.
    """
    opening = _curve(mouth_opening, "mouth_opening")
    envelope = audio_energy_envelope(audio, sample_rate, fps, num_frames=opening.size)
    correlations = lagged_correlation(envelope, opening, max_offset)
    lag, peak = _best_lag(correlations)
    values = np.array([value for value in correlations.values() if np.isfinite(value)])
    if values.size == 0:
        return MetricResult(float("nan"), "audio energy or mouth opening is constant", {"correlations": correlations})
    confidence = float(peak - np.median(values))
    extra = {"confidence": confidence, "peak_corr": peak, "correlations": {str(k): v for k, v in correlations.items()}}
    return MetricResult(float(lag), extra=extra)


def lse(frames: Tensor, audio: np.ndarray | Tensor, sample_rate: int, syncnet_weights: str | os.PathLike | None = None) -> dict[str, MetricResult]:
    """LSE-C / LSE-D (Wav2Lip's SyncNet scores). Not implemented in vasa3d: always "not measured".

    The scores need SyncNet's weights (``syncnet_v2.model``, shipped by no package) and its exact
    pre-processing (S3FD face crops, MFCC 13x20 windows); an approximate re-implementation would give
    numbers that do not compare with published LSE, so none is offered. Run ``syncnet_python`` on the
    written mp4 for these columns; ``av_offset_energy`` is the weight-free check here.
    """
    syncnet_weights = syncnet_weights or os.environ.get(SYNCNET_WEIGHTS_ENV)
    if not syncnet_weights:
        reason = f"SyncNet weights path not configured (pass syncnet_weights or set ${SYNCNET_WEIGHTS_ENV})"
    elif not os.path.isfile(syncnet_weights):
        reason = f"SyncNet weights not found at {syncnet_weights}"
    else:
        reason = "SyncNet scoring not implemented in vasa3d; run syncnet_python on the mp4"
    return {"lse_c": MetricResult.not_measured(reason), "lse_d": MetricResult.not_measured(reason)}
