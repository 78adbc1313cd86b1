"""Audio loading: formats, typed errors, streaming equals whole-file loading."""

import numpy as np
import pytest
import soundfile as sf

from vasa3d.audio.io import (AudioDecodeError, AudioError, AudioNotFoundError, EmptyAudioError, ShortAudioError,
                             SilentAudioError, load_audio, stream_audio)

FORMATS = [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")]


def _stereo(seconds=1.5, rate=44100):
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 220 * t)], 1).astype(np.float32)


@pytest.mark.parametrize("ext,fmt,subtype", FORMATS)
def test_formats_load_to_mono_16k(tmp_path, ext, fmt, subtype):
    path = tmp_path / f"speech.{ext}"
    sf.write(path, _stereo(), 44100, format=fmt, subtype=subtype)
    waveform, rate = load_audio(path)
    assert rate == 16000 and waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - 1.5 * 16000) < 0.02 * 16000  # codecs may pad a little
    # the channel mean of the two sines: RMS sqrt((0.4^2 + 0.2^2) / 8)
    assert np.sqrt(np.mean(waveform[2000:-2000] ** 2)) == pytest.approx(np.sqrt(0.2 / 8), rel=0.05)


@pytest.mark.parametrize("ext,fmt,subtype", [FORMATS[0], FORMATS[3]])
def test_streaming_equals_whole_file(tmp_path, ext, fmt, subtype):
    path = tmp_path / f"long.{ext}"
    sf.write(path, _stereo(3.3), 44100, format=fmt, subtype=subtype)
    whole, _ = load_audio(path)
    windows = list(stream_audio(path, window_s=0.7))
    assert all(len(w) == round(0.7 * 16000) for w in windows[:-1]) and len(windows) > 4
    np.testing.assert_allclose(np.concatenate(windows), whole, atol=1e-6)


def test_bad_audio_errors(tmp_path):
    with pytest.raises(AudioNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="empty.wav"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF1234WAVEnot really audio" * 10)
    with pytest.raises(AudioDecodeError, match="corrupt.wav"):
        load_audio(tmp_path / "corrupt.wav")
    sf.write(tmp_path / "nosamples.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(EmptyAudioError):
        load_audio(tmp_path / "nosamples.wav")
    sf.write(tmp_path / "silent.wav", np.full(16000, 1e-6, np.float32), 16000)
    with pytest.raises(SilentAudioError, match=r"silent.wav: the audio is silent .*record louder"):
        load_audio(tmp_path / "silent.wav")
    sf.write(tmp_path / "short.wav", 0.5 * np.ones(800, np.float32), 16000)
    with pytest.raises(ShortAudioError, match=r"short.wav: the audio lasts 0.050 s"):
        load_audio(tmp_path / "short.wav")
    with pytest.raises(ShortAudioError):
        list(stream_audio(tmp_path / "short.wav", window_s=1.0))
    assert len(load_audio(tmp_path / "short.wav", min_duration_s=0.01)[0]) == 800
    assert issubclass(SilentAudioError, AudioError) and issubclass(AudioError, ValueError)
