"""Voice activity per video frame: the Silero VAD model shipped inside the ``silero-vad`` wheel.

The model (TorchScript, ``silero_vad/data/silero_vad.jit``, trained on real speech in many
languages) is loaded straight from the installed wheel, without importing the ``silero_vad``
package (whose import calls ``torch.set_num_threads(1)`` for the whole process) and without
torchaudio. It reads 16 kHz audio in chunks of 512 samples (32 ms), carrying its state from chunk
to chunk, and gives each chunk a speech probability; :func:`voice_activity` averages those over
each video frame's span ``[t / fps, (t + 1) / fps)`` (the frames of ``vasa3d.audio.features``),
weighted by overlap. :class:`VoiceActivityStream` does the same for audio that arrives in pieces
(the online renderer), with the same result. Nothing is downloaded.
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
CHUNK_S = CHUNK / VAD_SAMPLE_RATE
_LOCK = threading.Lock()
_MODEL: torch.jit.ScriptModule | None = None
_IDLE: list[torch.jit.ScriptModule] = []  # models for streams (each carries its own state), not in use


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
            _MODEL = _load_model()
        return _MODEL


def _load_model() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(model_path()), map_location="cpu").eval()


def _warm_model() -> torch.jit.ScriptModule:
    """A model for a stream, loaded and through TorchScript's first two calls (they profile and optimise
    the graph: about 80 ms), its state reset."""
    model = _load_model()
    with torch.no_grad():
        for _ in range(3):
            model(torch.zeros(1, CHUNK), VAD_SAMPLE_RATE)
    model.reset_states()
    return model


def preload() -> None:
    """Ready a model for the next :class:`VoiceActivityStream` now (about 120 ms), so that the stream
    does not spend that time before its first frame."""
    with _LOCK:
        if _IDLE:
            return
    model = _warm_model()
    with _LOCK:
        _IDLE.append(model)


def chunk_probabilities(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Speech probability of each 32 ms chunk ``[ceil(N16 / 512)]`` of mono ``waveform [N]`` (resampled to 16 kHz).

    Chunk ``i`` covers ``[i * 0.032, (i + 1) * 0.032)`` seconds; the last chunk is zero-padded.
    """
    from vasa3d.audio.io import mono_at

    samples = mono_at(waveform, sample_rate, VAD_SAMPLE_RATE, "voice activity")
    if samples.size == 0:
        return np.zeros(0)
    model = load_vad()
    with _LOCK, torch.no_grad():  # the shared model's state: one caller at a time
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
    cumulative = np.concatenate([[0.0], np.cumsum(probs * CHUNK_S)])
    return _frame_activity(cumulative, 0, len(waveform) / sample_rate, fps, 0, num_frames)


def _frame_activity(cumulative: np.ndarray, first_chunk: int, duration: float, fps: float, start: int,
                    stop: int) -> np.ndarray:
    """Activity of frames ``[start, stop)`` of ``duration`` s of audio: the overlap-weighted mean of the
    chunk probabilities over each frame's span (frames past the end read 0). ``cumulative[j]``: the
    integral of the probability up to chunk edge ``first_chunk + j``; the edges must cover the frames."""
    # integral of the piecewise-constant chunk probability, sampled at the frame edges
    edges = np.arange(start, stop + 1) / fps
    chunk_edges = np.arange(first_chunk, first_chunk + len(cumulative)) * CHUNK_S
    integral = np.interp(np.minimum(edges, duration), chunk_edges, cumulative)
    covered = np.diff(np.minimum(edges, duration))
    out = np.zeros(stop - start)
    inside = covered > 1e-9
    out[inside] = np.diff(integral)[inside] / covered[inside]
    return np.clip(out, 0.0, 1.0)


class VoiceActivityStream:
    """:func:`voice_activity` of 16 kHz audio that arrives in pieces, frame by frame as soon as a
    frame's span is heard: :meth:`push` returns the frames completed by a piece, :meth:`finish` the
    rest. The concatenation equals :func:`voice_activity` of the whole audio.

    Each stream runs its own copy of the model (its state is per stream), taken from a pool
    (:func:`preload`) and returned by :meth:`finish` or :meth:`close`.

    Args:
        fps: video frame rate; frame ``t`` covers ``[t / fps, (t + 1) / fps)``.
        sample_rate: the audio's; must be 16 kHz (the model's rate; the feature extractor's default).
    """

    def __init__(self, fps: float, sample_rate: int = VAD_SAMPLE_RATE) -> None:
        if fps <= 0:
            raise ValueError(f"voice activity: fps must be positive; got {fps}")
        if sample_rate != VAD_SAMPLE_RATE:
            raise ValueError(f"VoiceActivityStream: {VAD_SAMPLE_RATE} Hz audio expected (the model's rate); got "
                             f"{sample_rate} Hz")
        self.fps = fps
        with _LOCK:
            model = _IDLE.pop() if _IDLE else None
        self._model = model if model is not None else _warm_model()
        self._model.reset_states()
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet in a whole chunk
        # running integral of the chunk probabilities at each chunk edge (summed in voice_activity's
        # order, so the frames come out bit for bit the same); only the tail is read
        self._cumulative: list[float] = [0.0]
        self._samples = 0
        self._frames = 0  # frames returned so far

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add mono samples ``[n]`` in [-1, 1]; returns the activity of the frames they complete."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._model is None:
            raise RuntimeError("VoiceActivityStream: push after finish")
        self._samples += samples.size
        self._pending = np.concatenate([self._pending, samples])
        whole = self._pending.size // CHUNK * CHUNK
        self._run(self._pending[:whole])
        self._pending = self._pending[whole:]
        heard = (len(self._cumulative) - 1) * CHUNK_S  # seconds the probabilities cover
        done = int(np.floor(heard * self.fps))  # frames whose whole span is covered (rounding: later, never early)
        return self._emit(done, np.inf)

    def finish(self, num_frames: int) -> np.ndarray:
        """The activity of the remaining frames up to ``num_frames`` (as :func:`voice_activity`'s
        ``num_frames``), the last partial chunk zero-padded; the model goes back to the pool."""
        if self._model is None:
            raise RuntimeError("VoiceActivityStream: finish called twice")
        if self._pending.size:
            padded = np.zeros(CHUNK, dtype=np.float32)
            padded[:self._pending.size] = self._pending
            self._run(padded)
            self._pending = self._pending[:0]
        out = self._emit(max(num_frames, self._frames), self._samples / VAD_SAMPLE_RATE)
        self.close()
        return out

    def close(self) -> None:
        """Return the model to the pool (idempotent)."""
        if self._model is not None:
            with _LOCK:
                _IDLE.append(self._model)
            self._model = None

    def _run(self, samples: np.ndarray) -> None:
        if samples.size:
            with torch.no_grad():
                chunks = torch.from_numpy(np.ascontiguousarray(samples)).reshape(-1, CHUNK)
                for chunk in chunks:
                    prob = float(self._model(chunk[None], VAD_SAMPLE_RATE))
                    self._cumulative.append(self._cumulative[-1] + prob * CHUNK_S)

    def _emit(self, stop: int, duration: float) -> np.ndarray:
        start, self._frames = self._frames, max(self._frames, stop)
        first = max(int(start / self.fps / CHUNK_S) - 1, 0)  # the chunk edge at or before the first frame's start
        first = min(first, len(self._cumulative) - 1)
        return _frame_activity(np.asarray(self._cumulative[first:]), first, duration, self.fps, start, self._frames)
