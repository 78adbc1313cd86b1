"""Voice activity per video frame (silero-vad shipped in its wheel) on espeak words with inserted silences."""

import numpy as np
import pytest
from speech_words import WORDS, words_with_pauses

from vasa3d.audio.vad import chunk_probabilities, load_vad, voice_activity

FPS = 25.0


@pytest.fixture(scope="module")
def speech():
    return words_with_pauses(WORDS)


def speech_mask(spans, frames, margin_s=0.0):
    centres = (np.arange(frames) + 0.5) / FPS
    inside = np.zeros(frames, bool)
    for start, end in spans:
        inside |= (centres >= start + margin_s) & (centres < end - margin_s)
    return inside


def test_speech_and_silence_are_told_apart(speech):
    waveform, sample_rate, spans = speech
    frames = int(round(len(waveform) / sample_rate * FPS))
    activity = voice_activity(waveform, sample_rate, FPS, frames)
    assert activity.shape == (frames,) and activity.dtype == np.float64
    assert activity.min() >= 0.0 and activity.max() <= 1.0
    core = speech_mask(spans, frames, margin_s=0.06)  # well inside the words
    silence = ~speech_mask(spans, frames, margin_s=-0.15)  # well away from them
    assert activity[core].mean() > 0.8 and activity[silence].mean() < 0.15
    assert ((activity > 0.5) == speech_mask(spans, frames)).mean() > 0.9
    # each word is found: some frame of every word is speech
    centres = (np.arange(frames) + 0.5) / FPS
    for start, end in spans:
        assert activity[(centres >= start) & (centres < end)].max() > 0.9


def test_loud_noise_is_not_speech_and_silence_reads_zero():
    sample_rate = 16000
    noise = (np.random.default_rng(0).standard_normal(3 * sample_rate) * 0.1).astype(np.float32)
    assert voice_activity(noise, sample_rate, FPS, 75).mean() < 0.2  # not an energy detector
    assert voice_activity(np.zeros(sample_rate, np.float32), sample_rate, FPS, 25).max() < 0.1


def test_frames_follow_the_feature_convention(speech):
    waveform, sample_rate, _ = speech
    duration = len(waveform) / sample_rate
    frames = int(round(duration * FPS))
    activity = voice_activity(waveform, sample_rate, FPS, frames + 10)
    assert (activity[frames + 1:] == 0).all()  # past the audio's end
    # the same audio at another rate and another fps agrees after the frame mapping
    from vasa3d.audio.io import resample

    at_16k = resample(waveform, sample_rate, 16000)
    np.testing.assert_allclose(voice_activity(at_16k, 16000, FPS, frames), activity[:frames], atol=0.15)
    fine = voice_activity(waveform, sample_rate, 2 * FPS, 2 * frames)
    np.testing.assert_allclose(fine.reshape(-1, 2).mean(1), activity[:frames], atol=1e-6)
    chunks = chunk_probabilities(at_16k, 16000)
    assert len(chunks) == int(np.ceil(len(at_16k) / 512))


def test_model_is_cached_and_bad_input_fails_clearly():
    assert load_vad() is load_vad()
    with pytest.raises(ValueError, match="mono"):
        voice_activity(np.zeros((2, 16000), np.float32), 16000, FPS, 25)
    with pytest.raises(ValueError, match="fps"):
        voice_activity(np.zeros(16000, np.float32), 16000, 0.0, 25)


def test_a_stream_hears_the_same_activity_as_the_whole_file(speech):
    """VoiceActivityStream over pieces of any size (one sample to several chunks) equals voice_activity
    of the whole; frames come as soon as their span is heard; the model goes back to the pool."""
    from vasa3d.audio.io import resample
    from vasa3d.audio.vad import VAD_SAMPLE_RATE, VoiceActivityStream

    waveform, sample_rate, _ = speech
    audio = resample(waveform, sample_rate, VAD_SAMPLE_RATE).astype(np.float32)
    frames = int(np.ceil(len(audio) / VAD_SAMPLE_RATE * FPS)) + 2  # two past the end: silence
    whole = voice_activity(audio, VAD_SAMPLE_RATE, FPS, frames)
    rng = np.random.default_rng(0)
    stream = VoiceActivityStream(FPS)
    parts, start, heard = [], 0, 0
    while start < len(audio):
        size = int(rng.choice([1, 100, 512, 3000, 7000]))
        piece = audio[start:start + size]
        start += len(piece)
        parts.append(stream.push(piece))
        heard += len(parts[-1])
        assert heard <= start / VAD_SAMPLE_RATE * FPS  # never a frame before its audio
        assert heard >= (start - 512) / VAD_SAMPLE_RATE * FPS - 1  # at most a chunk behind
    parts.append(stream.finish(frames))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(RuntimeError, match="finish"):
        stream.push(audio[:10])
    with pytest.raises(ValueError, match="16000 Hz"):
        VoiceActivityStream(FPS, sample_rate=22050)
