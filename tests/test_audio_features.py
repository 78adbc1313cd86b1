"""Frame-rate audio features: shapes, alignment, streaming equals whole-clip, speech encoder loading."""

import numpy as np
import pytest
import soundfile as sf
import torch

from vasa3d.audio.features import AudioFeatureExtractor, SpeechEncoderFeatures, features_from_file


def _tone_bursts(rate=16000, seconds=3.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.003 * rng.standard_normal(len(t))
    for start in (0.52, 1.48, 2.2):  # 200 Hz bursts of 0.2 s
        mask = (t >= start) & (t < start + 0.2)
        wave[mask] += 0.5 * np.sin(2 * np.pi * 200 * t[mask])
    return wave.astype(np.float32)


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97])
def test_shapes_and_frame_count(fps):
    ext = AudioFeatureExtractor(fps=fps, n_mels=24)
    feats = ext(np.zeros(int(16000 * 2.345), np.float32) + 0.01)
    assert ext.dim == 24 + 3 and feats.shape == (round(2.345 * fps), ext.dim) and feats.dtype == torch.float32
    assert AudioFeatureExtractor(pitch=False).dim == 41


def test_click_lands_in_its_frame():
    ext = AudioFeatureExtractor(fps=25.0)
    wave = np.zeros(16000 * 2, np.float32)
    wave[int(1.23 * 16000): int(1.23 * 16000) + 80] = 0.8  # a 5 ms click at 1.23 s -> frame 30 (1.20-1.24 s)
    energy = ext(wave)[:, ext.n_mels]
    assert int(energy.argmax()) == 30
    assert energy[30] > energy[28] + 1 and energy[30] > energy[32] + 1


def test_pitch_and_voicing_of_tone_bursts():
    ext = AudioFeatureExtractor(fps=25.0)
    feats = ext(_tone_bursts())
    voiced, log_f0 = feats[:, -1], feats[:, -2]
    inside = [f for f in range(75) if 0.56 <= (f + 0.5) / 25 <= 0.68]  # well inside the first burst
    assert voiced[inside].all() and voiced[5:10].sum() == 0
    f0 = 150 * 2 ** log_f0[inside]
    assert torch.allclose(f0, torch.full_like(f0, 200.0), rtol=0.02)
    assert (log_f0[voiced == 0] == 0).all()


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_streaming_features_equal_whole_clip(tmp_path, fps):
    ext = AudioFeatureExtractor(fps=fps)
    wave = _tone_bursts()
    whole = ext(wave)
    chunks = np.split(wave, [3000, 3100, 20000, 31111])  # uneven chunks, one shorter than a window
    torch.testing.assert_close(ext.from_chunks(chunks), whole, rtol=0, atol=1e-5)
    sf.write(tmp_path / "bursts.wav", wave, 16000, subtype="FLOAT")
    torch.testing.assert_close(features_from_file(tmp_path / "bursts.wav", ext, window_s=0.37), whole, rtol=0, atol=1e-5)


class _TinyEncoder(torch.nn.Module):
    """A stand-in speech encoder: ``[1, N]`` -> ``[1, T', 8]``."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 8, kernel_size=400, stride=320)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.conv(audio[:, None]).transpose(1, 2)


def test_speech_encoder_needs_a_local_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no speech encoder here"):
        SpeechEncoderFeatures(tmp_path / "wav2vec2")
    torch.jit.script(_TinyEncoder()).save(str(tmp_path / "encoder.pt"))
    encoder = SpeechEncoderFeatures(tmp_path / "encoder.pt", fps=25.0)
    assert encoder.dim == 8 and encoder(np.zeros(32000, np.float32)).shape == (50, 8)
