"""Audio features at the video frame rate: log-mel, RMS energy and pitch, ``[T, F]``.

Frame ``t`` stands for the time span ``[t / fps, (t + 1) / fps)``; its analysis windows are centred
on the span's centre, sample ``round((t + 0.5) * sample_rate / fps)`` (zeros outside the signal), so
``T = round(duration * fps)`` frames line up with the video frames of the same clip at any fps, not
only those where ``sample_rate / fps`` is an integer. Channels, in order:

- ``n_mels`` log-mel bands: power spectrum of a Hann window of ``n_fft`` samples (~64 ms),
  normalised by the window's sum so a full-scale sine reads about -6 dB, mel filters by librosa;
- RMS energy over the frame's own span;
- with ``pitch``: ``log2(f0 / 150 Hz)`` where voiced and 0 where not, then the voiced flag (0/1).
  f0 comes from YIN (de Cheveigné & Kawahara 2002) on the same window as the mel spectrum; a frame
  is voiced where YIN's aperiodicity is below ``voicing_threshold`` and the energy is loud enough.

Normalisation (``normalization``):

- ``"running"`` (default): level- and channel-invariant, and causal. A speech-level tracker follows the
  loudest recent frame, ``L_t = max(rms_t, L_{t-1} - level_decay_db_s / fps, LEVEL_FLOOR_DBFS)``; the mel
  bands and the energy are read relative to it (in dB, clipped at ``RELATIVE_FLOOR_DB``), so a gain
  shifts nothing once the tracker has seen the first loud frame. Each mel band then has its running
  mean over speech frames (``rms >= L - 25 dB``; exponential, time constant ``channel_time_s``,
  starting from a fixed long-term speech spectrum) subtracted: a fixed microphone or telephone
  colouring is a per-band dB offset, and this removes it (cepstral mean normalisation, causal).
  Voicing needs ``rms >= L - VOICED_BELOW_LEVEL_DB``. Scales: ``(mel - mean) / REL_MEL_SCALE`` and
  ``(rms - L - REL_RMS_OFFSET) / REL_RMS_SCALE``.
- ``"fixed"``: constants, ``(dB - MEL_DB_OFFSET) / MEL_DB_SCALE`` and ``(dB - RMS_DB_OFFSET) / RMS_DB_SCALE``,
  voiced above -50 dBFS; features then follow the recording's level.

Either way each frame depends only on the samples inside its windows and on the frames before it
(the running state is updated frame by frame, in order), so :class:`FeatureStream` (fed window by
window) gives exactly the features of the whole clip at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import librosa
import numpy as np
import torch
from torch import Tensor

MEL_DB_OFFSET, MEL_DB_SCALE = -75.0, 20.0  # speech at normal levels lands in about [-1.5, 2]
RMS_DB_OFFSET, RMS_DB_SCALE = -35.0, 15.0
F0_REFERENCE_HZ = 150.0
VOICED_MIN_DBFS = -50.0
EPS_POWER = 1e-10
# "running" normalisation (see the module docstring)
EPS_POWER_RUNNING = 1e-14  # -140 dB: far below the relative floor for any level above -50 dBFS
LEVEL_FLOOR_DBFS = -60.0  # the level tracker never goes below: quieter input counts as silence
RELATIVE_FLOOR_DB = -90.0
SPEECH_BELOW_LEVEL_DB = 25.0
VOICED_BELOW_LEVEL_DB = 35.0
REL_MEL_SCALE = 15.0
REL_RMS_OFFSET, REL_RMS_SCALE = -20.0, 15.0
CHANNEL_PRIOR_DB = (-31.0, -42.0)  # long-term espeak speech spectrum vs the level: a + b * band position in [0, 1]


class AudioFeatureExtractor:
    """Waveform ``[N]`` (mono float32 at ``sample_rate``) -> features ``[T, dim]`` at ``fps``.

    Args:
        sample_rate: the waveform's sample rate, Hz.
        fps: the video frame rate the features are aligned with.
        n_mels: number of log-mel bands.
        pitch: add the log-f0 and voiced-flag channels.
        n_fft: analysis window in samples; None = about 64 ms (the next power of two).
        fmin_hz: lowest mel frequency and lowest f0 searched.
        fmax_hz: highest f0 searched.
        voicing_threshold: YIN aperiodicity below which a frame counts as voiced.
        normalization: "running" (level- and channel-invariant, causal) or "fixed" (constants).
        level_decay_db_s: how fast the running level tracker falls in pauses, dB per second.
        channel_time_s: time constant of the running per-band mean, seconds.
    """

    def __init__(self, sample_rate: int = 16000, fps: float = 25.0, n_mels: int = 40, pitch: bool = True,
                 n_fft: int | None = None, fmin_hz: float = 60.0, fmax_hz: float = 500.0,
                 voicing_threshold: float = 0.25, normalization: str = "running", level_decay_db_s: float = 2.0,
                 channel_time_s: float = 3.0) -> None:
        if fps <= 0 or sample_rate <= 0:
            raise ValueError(f"AudioFeatureExtractor: fps ({fps}) and sample_rate ({sample_rate}) must be positive")
        if normalization not in ("running", "fixed"):
            raise ValueError(f"AudioFeatureExtractor: normalization={normalization!r}; use 'running' or 'fixed'")
        self.normalization = normalization
        self.level_decay_db_s, self.channel_time_s = float(level_decay_db_s), float(channel_time_s)
        self.sample_rate, self.fps, self.n_mels, self.pitch = int(sample_rate), float(fps), int(n_mels), bool(pitch)
        self.n_fft = int(n_fft or 2 ** math.ceil(math.log2(0.064 * sample_rate)))
        self.fmin_hz, self.fmax_hz, self.voicing_threshold = float(fmin_hz), float(fmax_hz), float(voicing_threshold)
        self.hop = self.sample_rate / self.fps  # samples per video frame (not necessarily an integer)
        self.min_lag = max(2, int(self.sample_rate / self.fmax_hz))
        self.max_lag = int(math.ceil(self.sample_rate / self.fmin_hz))
        if self.n_fft < 2 * self.max_lag:
            raise ValueError(f"AudioFeatureExtractor: n_fft={self.n_fft} is too short for f0 down to {fmin_hz} Hz; "
                             f"use n_fft >= {2 * self.max_lag} or a higher fmin_hz")
        self.window = np.hanning(self.n_fft + 1)[:-1].astype(np.float64)  # periodic Hann
        self.mel_basis = librosa.filters.mel(sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels,
                                             fmin=self.fmin_hz, fmax=self.sample_rate / 2).astype(np.float64)

    @property
    def dim(self) -> int:
        """F, the number of feature channels."""
        return self.n_mels + 1 + (2 if self.pitch else 0)

    def config(self) -> dict:
        """The constructor arguments (for cache keys and checkpoints)."""
        return {"sample_rate": self.sample_rate, "fps": self.fps, "n_mels": self.n_mels, "pitch": self.pitch,
                "n_fft": self.n_fft, "fmin_hz": self.fmin_hz, "fmax_hz": self.fmax_hz,
                "voicing_threshold": self.voicing_threshold, "normalization": self.normalization,
                "level_decay_db_s": self.level_decay_db_s, "channel_time_s": self.channel_time_s}

    def num_frames(self, num_samples: int) -> int:
        """T = round(duration * fps) for a clip of ``num_samples``."""
        return int(round(num_samples * self.fps / self.sample_rate))

    def frame_centre(self, frame: np.ndarray | int) -> np.ndarray:
        """Sample index at the centre of frame ``t``'s span."""
        return np.floor((np.asarray(frame, dtype=np.float64) + 0.5) * self.hop + 0.5).astype(np.int64)

    def __call__(self, waveform: np.ndarray | Tensor) -> Tensor:
        """Features ``[T, dim]`` float32 of a whole mono waveform ``[N]``."""
        stream = self.stream()
        head = stream.push(waveform)
        return torch.cat([head, stream.finish()])

    def stream(self) -> "FeatureStream":
        """A :class:`FeatureStream` that takes the waveform in consecutive chunks."""
        return FeatureStream(self)

    def from_chunks(self, chunks: Iterable[np.ndarray]) -> Tensor:
        """Features ``[T, dim]`` of consecutive waveform chunks (e.g. ``stream_audio``'s windows)."""
        stream = self.stream()
        parts = [stream.push(chunk) for chunk in chunks]
        return torch.cat(parts + [stream.finish()])

    # ------------------------------------------------------------ per-frame analysis
    def frame_features(self, frames: np.ndarray, state: dict | None = None) -> np.ndarray:
        """``[T, dim]`` from analysis windows ``[T, n_fft]`` centred on consecutive frames' centres.

        ``state`` is the running normaliser's (``initial_state()``), updated in place; None starts afresh.
        """
        frames = frames.astype(np.float64)
        running = self.normalization == "running"
        spectrum = np.fft.rfft(frames * self.window, axis=-1)
        power = np.abs(spectrum) ** 2 / self.window.sum() ** 2 * 4  # full-scale sine: 1 in its bin
        mel_db = 10.0 * np.log10(power @ self.mel_basis.T + (EPS_POWER_RUNNING if running else EPS_POWER))
        half = self.n_fft // 2
        span = max(1, int(round(self.hop)))
        own = frames[:, half - span // 2: half - span // 2 + span]  # the frame's own time span
        rms_db = 20.0 * np.log10(np.sqrt(np.mean(own**2, axis=-1)) + (1e-7 if running else 1e-5))
        if running:
            mel, rms, loud = self._running(mel_db, rms_db, self.initial_state() if state is None else state)
        else:
            mel, rms = (mel_db - MEL_DB_OFFSET) / MEL_DB_SCALE, (rms_db - RMS_DB_OFFSET) / RMS_DB_SCALE
            loud = rms_db > VOICED_MIN_DBFS
        out = [mel, rms[:, None]]
        if self.pitch:
            f0, aperiodicity = self.yin(frames)
            voiced = (aperiodicity < self.voicing_threshold) & loud
            log_f0 = np.where(voiced, np.log2(np.maximum(f0, 1.0) / F0_REFERENCE_HZ), 0.0)
            out += [log_f0[:, None], voiced[:, None].astype(np.float64)]
        return np.concatenate(out, axis=1).astype(np.float32)

    def initial_state(self) -> dict:
        """The running normaliser's state before the first frame: level tracker and per-band means (dB)."""
        position = np.linspace(0.0, 1.0, self.n_mels)
        return {"level": LEVEL_FLOOR_DBFS, "band_mean": CHANNEL_PRIOR_DB[0] + CHANNEL_PRIOR_DB[1] * position}

    def _running(self, mel_db: np.ndarray, rms_db: np.ndarray, state: dict):
        """Causal level and channel normalisation, frame by frame in order (see the module docstring)."""
        decay = self.level_decay_db_s / self.fps
        rate = 1.0 - math.exp(-1.0 / (self.channel_time_s * self.fps))
        level, band_mean = state["level"], state["band_mean"].copy()
        mel = np.empty_like(mel_db)
        rms = np.empty_like(rms_db)
        loud = np.empty(len(rms_db), dtype=bool)
        for t in range(len(rms_db)):
            level = max(rms_db[t], level - decay, LEVEL_FLOOR_DBFS)
            relative = np.maximum(mel_db[t] - level, RELATIVE_FLOOR_DB)
            rms[t] = max(rms_db[t] - level, RELATIVE_FLOOR_DB)
            if rms[t] >= -SPEECH_BELOW_LEVEL_DB:
                band_mean += rate * (relative - band_mean)
            mel[t] = relative - band_mean
            loud[t] = rms[t] >= -VOICED_BELOW_LEVEL_DB
        state["level"], state["band_mean"] = level, band_mean
        return mel / REL_MEL_SCALE, (rms - REL_RMS_OFFSET) / REL_RMS_SCALE, loud

    def yin(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """YIN f0 (Hz) and aperiodicity (cumulative-mean-normalised difference at the chosen lag), ``[T]`` each."""
        width = self.n_fft - self.max_lag  # integration window
        size = 2 ** math.ceil(math.log2(self.n_fft + width))
        head = np.fft.rfft(frames[:, :width], n=size)
        full = np.fft.rfft(frames, n=size)
        corr = np.fft.irfft(np.conj(head) * full, n=size)[:, : self.max_lag + 1]  # r(tau) = sum x_j x_{j+tau}
        energy = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
        lags = np.arange(self.max_lag + 1)
        shifted = energy[:, lags + width] - energy[:, lags]  # sum_{j<width} x_{j+tau}^2
        diff = np.maximum(shifted[:, :1] + shifted - 2 * corr, 0.0)
        cmnd = np.ones_like(diff)
        cumulative = np.cumsum(diff[:, 1:], axis=1)
        cmnd[:, 1:] = diff[:, 1:] * lags[1:] / np.maximum(cumulative, 1e-12)
        search = cmnd[:, self.min_lag: self.max_lag]
        # first dip below the threshold (at its local minimum), else the global minimum
        below = search < 0.1
        local_min = np.zeros_like(below)
        local_min[:, 1:-1] = (search[:, 1:-1] <= search[:, :-2]) & (search[:, 1:-1] <= search[:, 2:])
        candidates = below & local_min
        first = np.where(candidates.any(axis=1), candidates.argmax(axis=1), search.argmin(axis=1))
        lag = first + self.min_lag
        rows = np.arange(len(frames))
        left, mid, right = cmnd[rows, lag - 1], cmnd[rows, lag], cmnd[rows, np.minimum(lag + 1, self.max_lag)]
        curvature = left - 2 * mid + right
        shift = np.where(np.abs(curvature) > 1e-12, 0.5 * (left - right) / np.where(curvature == 0, 1, curvature), 0)
        refined = lag + np.clip(shift, -1, 1)
        return self.sample_rate / refined, mid


class FeatureStream:
    """Features of a waveform fed in consecutive chunks; the output equals the whole-clip features.

    ``push(chunk)`` returns the frames whose analysis windows are complete (``[t, dim]``, possibly
    none); ``finish()`` returns the rest, zero-padding past the end, up to ``T = round(duration * fps)``.
    Memory holds one analysis window plus the last chunk.
    """

    def __init__(self, extractor: AudioFeatureExtractor) -> None:
        self.extractor = extractor
        half = extractor.n_fft // 2
        self.buffer = np.zeros(half, np.float64)  # zeros before the signal
        self.buffer_start = -half  # absolute sample index of buffer[0]
        self.received = 0
        self.next_frame = 0
        self.finished = False
        self.state = extractor.initial_state()  # the running normaliser's, carried across chunks

    def _emit(self, last_frame: int) -> Tensor:
        ext = self.extractor
        frames = np.arange(self.next_frame, last_frame)
        if len(frames) == 0:
            return torch.zeros(0, ext.dim)
        starts = ext.frame_centre(frames) - ext.n_fft // 2 - self.buffer_start
        needed = int(starts.max()) + ext.n_fft
        if needed > len(self.buffer):  # only at the end: zeros after the signal
            self.buffer = np.concatenate([self.buffer, np.zeros(needed - len(self.buffer))])
        windows = self.buffer[starts[:, None] + np.arange(ext.n_fft)]
        self.next_frame = last_frame
        keep_from = int(ext.frame_centre(last_frame)) - ext.n_fft // 2 - self.buffer_start
        if keep_from > 0:
            self.buffer, self.buffer_start = self.buffer[keep_from:], self.buffer_start + keep_from
        return torch.from_numpy(ext.frame_features(windows, self.state))

    def push(self, chunk: np.ndarray | Tensor) -> Tensor:
        """Add the next chunk ``[n]``; return the frames ``[t, dim]`` completed by it."""
        if self.finished:
            raise RuntimeError("FeatureStream: push() after finish(); start a new stream")
        chunk = chunk.detach().cpu().numpy() if isinstance(chunk, Tensor) else np.asarray(chunk)
        if chunk.ndim != 1:
            raise ValueError(f"FeatureStream: chunks must be mono [N], got shape {chunk.shape}")
        self.buffer = np.concatenate([self.buffer, chunk.astype(np.float64)])
        self.received += len(chunk)
        ext = self.extractor
        # frame t is complete when its window end, centre_t + n_fft/2, is within the received samples
        last = self.next_frame
        while int(ext.frame_centre(last)) + ext.n_fft - ext.n_fft // 2 <= self.received:
            last += 1
        return self._emit(last)

    def finish(self) -> Tensor:
        """The remaining frames ``[t, dim]`` up to ``T = round(duration * fps)``."""
        self.finished = True
        return self._emit(max(self.extractor.num_frames(self.received), self.next_frame))


def features_from_file(path: str | os.PathLike, extractor: AudioFeatureExtractor, window_s: float = 30.0) -> Tensor:
    """Features ``[T, dim]`` of an audio file, read and analysed in windows of ``window_s`` (bounded memory)."""
    from vasa3d.audio.io import stream_audio

    return extractor.from_chunks(stream_audio(path, window_s, extractor.sample_rate))


class SpeechEncoderFeatures:
    """Hidden states of a local speech encoder (wav2vec2 / HuBERT style), resampled to ``fps``: ``[T, C]``.

    Loads ONLY from ``path``: a TorchScript file (``.pt``/``.ts``; called as ``model(waveform [1, N])``,
    returning ``[1, T', C]`` or a tuple/dict whose first entry is) or a HuggingFace-format folder
    (``config.json`` + weights; needs the ``transformers`` package). Nothing is downloaded.

    Args:
        path: the model file or folder.
        sample_rate: the rate the model expects, Hz.
        fps: the video frame rate to resample the hidden states to.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, fps: float = 25.0) -> None:
        self.path, self.sample_rate, self.fps = Path(path), int(sample_rate), float(fps)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no speech encoder here; set the speech encoder path to a local "
                                    "TorchScript file or a HuggingFace-format model folder (config.json + weights) — "
                                    "nothing is downloaded")
        if self.path.is_file():
            self.model = torch.jit.load(str(self.path), map_location="cpu").eval()
            self.hf = False
        else:
            try:
                from transformers import AutoModel
            except ImportError as error:
                raise ImportError(f"{self.path}: loading a HuggingFace-format speech encoder needs the `transformers` "
                                  "package, which is not installed; install it, or export the model to TorchScript "
                                  "and set the path to that .pt file") from error
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
            self.hf = True
        self.dim = int(self._hidden(np.zeros(self.sample_rate, np.float32)).shape[-1])

    @torch.no_grad()
    def _hidden(self, waveform: np.ndarray) -> Tensor:
        audio = torch.as_tensor(np.asarray(waveform, dtype=np.float32))[None]
        out = self.model(audio)
        if self.hf:
            out = out.last_hidden_state
        elif isinstance(out, dict):
            out = next(iter(out.values()))
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out[0].float()  # [T', C]

    def __call__(self, waveform: np.ndarray | Tensor) -> Tensor:
        """``[T, C]`` float32 with ``T = round(duration * fps)``, linearly resampled in time."""
        waveform = waveform.detach().cpu().numpy() if isinstance(waveform, Tensor) else np.asarray(waveform)
        hidden = self._hidden(waveform)  # [T', C]
        frames = int(round(len(waveform) * self.fps / self.sample_rate))
        return torch.nn.functional.interpolate(hidden.T[None], size=frames, mode="linear",
                                               align_corners=False)[0].T.contiguous()
