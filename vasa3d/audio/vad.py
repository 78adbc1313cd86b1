"""Voice activity per video frame: the Silero VAD model shipped inside the ``silero-vad`` wheel.

The model (TorchScript, ``silero_vad/data/silero_vad.jit``, trained on real speech in many
languages) is loaded straight from the installed wheel, once per process, without importing the
``silero_vad`` package (whose import calls ``torch.set_num_threads(1)`` for the whole process) and
without torchaudio. It reads 16 kHz audio in chunks of 512 samples (32 ms) and gives each chunk a
speech probability; :func:`voice_activity` averages those over each video frame's span
``[t / fps, (t + 1) / fps)`` (the frames of ``vasa3d.audio.features``), weighted by overlap.
Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

VAD_SAMPLE_RATE = 16000
CHUNK = 512  # samples per model step at 16 kHz (32 ms)
_LOCK = threading.Lock()
_MODEL: torch.jit.ScriptModule | None = None


class VADUnavailableError(RuntimeError):
    """The silero-vad wheel (and its model file) is not installed."""


def model_path() -> Path:
    """The TorchScript file inside the installed ``silero-vad`` wheel (the package itself is not imported)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VADUnavailableError("voice activity needs silero-vad: `pip install silero-vad==6.2.3`")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.jit"
    if not path.is_file():
        raise VADUnavailableError(f"silero-vad is installed but its model {path} is missing; "
                                  "reinstall silero-vad==6.2.3")
    return path


def load_vad() -> torch.jit.ScriptModule:
    """The Silero VAD model (CPU, eval mode), loaded on the first call and cached for the process."""
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                _MODEL = torch.jit.load(str(model_path()), map_location="cpu").eval()
        return _MODEL


def chunk_probabilities(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Speech probability of each 32 ms chunk ``[ceil(N16 / 512)]`` of mono ``waveform [N]`` (resampled to 16 kHz).

    Chunk ``i`` covers ``[i * 0.032, (i + 1) * 0.032)`` seconds; the last chunk is zero-padded.
    """
    from vasa3d.audio.io import mono_at

    samples = mono_at(waveform, sample_rate, VAD_SAMPLE_RATE, "voice activity")
    if samples.size == 0:
        return np.zeros(0)
    model = load_vad()
    with _LOCK, torch.no_grad():
        model.reset_states()
        probs = model.audio_forward(torch.from_numpy(np.ascontiguousarray(samples)), VAD_SAMPLE_RATE)
    return probs.reshape(-1).double().numpy()


def voice_activity(waveform: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """Speech probability per video frame, ``[num_frames]`` float in ``[0, 1]``.

    Args:
        waveform: mono audio ``[N]`` in ``[-1, 1]``, any sample rate (resampled to 16 kHz for the model).
        sample_rate: samples per second of ``waveform``.
        fps: video frame rate; frame ``t`` covers ``[t / fps, (t + 1) / fps)``.
        num_frames: T, frames to return; frames past the audio's end read 0.
    """
    if fps <= 0:
        raise ValueError(f"voice activity: fps must be positive; got {fps}")
    if num_frames < 0:
        raise ValueError(f"voice activity: num_frames must be >= 0; got {num_frames}")
    probs = chunk_probabilities(waveform, sample_rate)
    duration = len(waveform) / sample_rate
    chunk_s = CHUNK / VAD_SAMPLE_RATE
    # integral of the piecewise-constant chunk probability, sampled at the frame edges
    edges = np.arange(num_frames + 1) / fps
    chunk_edges = np.arange(probs.size + 1) * chunk_s
    cumulative = np.concatenate([[0.0], np.cumsum(probs * chunk_s)])
    integral = np.interp(np.minimum(edges, duration), chunk_edges, cumulative)
    covered = np.diff(np.minimum(edges, duration))
    out = np.zeros(num_frames)
    inside = covered > 1e-9
    out[inside] = np.diff(integral)[inside] / covered[inside]
    return np.clip(out, 0.0, 1.0)
