"""Audio loading: any file soundfile (wav, flac, ogg, mp3) or PyAV (mp4, m4a, webm, ...) reads,
to mono float32 at one sample rate, with typed errors for audio that cannot drive a face.

``load_audio`` reads a whole file; ``stream_audio`` reads a long one in fixed windows without holding
it in memory, resampling chunk by chunk with soxr's streaming resampler (so the concatenated windows
equal ``load_audio``'s output up to float rounding).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SILENCE_DBFS = -60.0  # RMS below this is "silent"
MIN_DURATION_S = 0.2
RESAMPLE_QUALITY = "HQ"
# libsndfile 1.2.2 decodes mp3 wrongly when read in chunks (checked), so mp3 goes through PyAV too.
AV_SUFFIXES = (".mp3", ".mp4", ".m4a", ".mov", ".mkv", ".webm", ".aac", ".avi")


class AudioError(ValueError):
    """Audio that cannot be used; the message names the file, the problem and the fix."""


class AudioNotFoundError(AudioError, FileNotFoundError):
    """The file does not exist."""


class AudioDecodeError(AudioError):
    """The file exists but no decoder can read it (corrupt or not audio)."""


class EmptyAudioError(AudioError):
    """The file decodes to no samples."""


class SilentAudioError(AudioError):
    """The audio is (near) silent."""


class ShortAudioError(AudioError):
    """The audio is shorter than the configured minimum."""


def _name(path: str | os.PathLike) -> str:
    return Path(path).name or str(path)


def _dbfs(value: float) -> float:
    return 20.0 * math.log10(max(value, 1e-5))


def to_mono(samples: np.ndarray) -> np.ndarray:
    """``[N]`` float32 from ``[N]`` or ``[N, C]`` (channel mean)."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples.mean(axis=1, dtype=np.float32) if samples.ndim == 2 else samples


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono ``[N]`` float32 (soxr, the same filter as the streaming path)."""
    if orig_sr == target_sr:
        return np.asarray(waveform, dtype=np.float32)
    stream = soxr.ResampleStream(orig_sr, target_sr, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    return stream.resample_chunk(np.asarray(waveform, dtype=np.float32), last=True)


def mono_at(waveform: np.ndarray, sample_rate: int, target_sr: int, what: str) -> np.ndarray:
    """Mono ``waveform [N]`` checked and resampled to ``target_sr`` (float32), for a model that needs that rate;
    ``what`` names the caller in the error of a bad input."""
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"{what}: waveform must be mono [N]; got shape {samples.shape}")
    if sample_rate <= 0:
        raise ValueError(f"{what}: sample_rate must be positive; got {sample_rate}")
    return resample(samples, int(sample_rate), target_sr).astype(np.float32, copy=False)


def _av_blocks(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    """Decode the first audio stream with PyAV, incrementally: (sample rate, iterator of ``[n, C]`` float32)."""
    import av

    try:
        container = av.open(str(path))
    except Exception as error:  # PyAV raises its own hierarchy (av.error.*)
        raise AudioDecodeError(f"{path.name}: cannot decode the audio ({error}); the file may be corrupt or not "
                               "audio — re-encode it as wav or flac") from error
    if not container.streams.audio:
        container.close()
        raise AudioDecodeError(f"{path.name}: the file has no audio stream; use a file with sound "
                               "or give the audio as a separate file")
    stream = container.streams.audio[0]

    def blocks() -> Iterator[np.ndarray]:
        resampler = av.AudioResampler(format="fltp")
        try:
            with container:
                for frame in container.decode(stream):
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().T.astype(np.float32)  # [n, C]
                for out in resampler.resample(None):
                    yield out.to_ndarray().T.astype(np.float32)
        except Exception as error:
            raise AudioDecodeError(f"{path.name}: decoding failed part-way ({error}); the file may be truncated "
                                   "— re-encode it as wav or flac") from error

    return stream.codec_context.sample_rate, blocks()


def _open(path: Path) -> sf.SoundFile:
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioDecodeError(f"{path.name}: cannot read the audio ({error}); the file may be corrupt or not "
                               "audio — re-export it as wav, flac, ogg or mp3") from error


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AudioNotFoundError(f"{path}: no such audio file; check the path")
    if path.stat().st_size == 0:
        raise EmptyAudioError(f"{path.name}: the file is empty (0 bytes); record or export the audio again")
    return path


def check_waveform(waveform: np.ndarray, sample_rate: int, name: str = "<waveform>",
                   min_duration_s: float = MIN_DURATION_S, silence_dbfs: float = SILENCE_DBFS) -> None:
    """Raise ``EmptyAudioError``, ``ShortAudioError`` or ``SilentAudioError`` for unusable mono audio."""
    if waveform.size == 0:
        raise EmptyAudioError(f"{name}: the audio has no samples; record or export it again")
    duration = waveform.size / sample_rate
    if duration < min_duration_s:
        raise ShortAudioError(f"{name}: the audio lasts {duration:.3f} s; at least {min_duration_s:g} s is needed "
                              "— use a longer clip (or lower min_duration_s)")
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
    if _dbfs(rms) < silence_dbfs:
        peak = float(np.abs(waveform).max())
        raise SilentAudioError(f"{name}: the audio is silent (RMS {_dbfs(rms):.0f} dBFS, peak {_dbfs(peak):.0f} dBFS, "
                               f"threshold {silence_dbfs:g} dBFS); record louder or pick another file")


def _source(path: Path, block_s: float) -> tuple[int, int | None, Iterator[np.ndarray]]:
    """(sample rate, frame count or None when unknown, iterator of ``[n, C]`` float32 blocks of ~``block_s``)."""
    if path.suffix.lower() in AV_SUFFIXES:
        rate, blocks = _av_blocks(path)
        return rate, None, blocks
    handle = _open(path)
    rate, frames = handle.samplerate, handle.frames

    def blocks() -> Iterator[np.ndarray]:
        with handle:
            size = max(1, int(round(block_s * rate)))
            while True:
                try:
                    block = handle.read(size, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as error:
                    raise AudioDecodeError(f"{path.name}: decoding failed part-way ({error}); the file may be "
                                           "truncated — re-export it") from error
                if len(block) == 0:
                    return
                yield block

    return rate, frames, blocks()


def _resampled(path: Path, sample_rate: int, block_s: float) -> Iterator[np.ndarray]:
    """Mono float32 chunks at ``sample_rate``; a streaming soxr resampler keeps its state between blocks."""
    rate, _, blocks = _source(path, block_s)
    stream = None if rate == sample_rate else soxr.ResampleStream(rate, sample_rate, 1, dtype="float32",
                                                                  quality=RESAMPLE_QUALITY)
    for block in blocks:
        mono = to_mono(block)
        yield mono if stream is None else stream.resample_chunk(mono, last=False)
    if stream is not None:
        yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    min_duration_s: float = MIN_DURATION_S,
    silence_dbfs: float = SILENCE_DBFS,
) -> tuple[np.ndarray, int]:
    """Read a whole audio file as mono float32 ``[N]`` in [-1, 1] at ``sample_rate``: ``(waveform, sample_rate)``.

    Reads wav/flac/ogg (soundfile), mp3 and the audio track of mp4/m4a/mov/mkv/webm (PyAV); stereo
    is averaged to mono. Raises an ``AudioError`` subclass for a missing, corrupt, empty, too short
    (< ``min_duration_s``) or silent (RMS < ``silence_dbfs``) file.
    """
    path = _check_path(path)
    chunks = list(_resampled(path, sample_rate, block_s=60.0))
    waveform = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    check_waveform(waveform, sample_rate, path.name, min_duration_s, silence_dbfs)
    return waveform, sample_rate


def stream_audio(
    path: str | os.PathLike,
    window_s: float = 10.0,
    sample_rate: int = 16000,
    min_duration_s: float = MIN_DURATION_S,
) -> Iterator[np.ndarray]:
    """Yield mono float32 windows ``[round(window_s * sample_rate)]`` (the last one shorter) of a long file.

    Decodes ``window_s`` of source audio at a time (soundfile blocks; PyAV packets for mp3 and
    containers) and resamples it with a streaming soxr resampler that keeps its filter state between
    chunks, so the windows concatenate to ``load_audio(path)``'s output while memory stays bounded by
    the window. Missing, corrupt and empty files raise before the first window, files shorter than
    ``min_duration_s`` by the end of the first window; silence is not checked (it needs the whole file).
    """
    path = _check_path(path)
    out_window = max(1, int(round(window_s * sample_rate)))
    min_samples = int(math.ceil(min_duration_s * sample_rate))
    pending, emitted = np.zeros(0, np.float32), 0
    for chunk in _resampled(path, sample_rate, block_s=window_s):
        pending = np.concatenate([pending, chunk])
        while len(pending) >= out_window and len(pending) + emitted >= min_samples:
            yield pending[:out_window]
            pending, emitted = pending[out_window:], emitted + out_window
    total = emitted + len(pending)
    if total == 0:
        raise EmptyAudioError(f"{path.name}: the audio has no samples; record or export it again")
    if total < min_samples:
        raise ShortAudioError(f"{path.name}: the audio lasts {total / sample_rate:.3f} s; at least "
                              f"{min_duration_s:g} s is needed — use a longer clip (or lower min_duration_s)")
    if len(pending):
        yield pending
