"""espeak-ng synthesis with phoneme timings, and phonemes -> coarticulated mouth motion."""

import numpy as np
import pytest

from vasa3d.audio.speech import SpeechSynthesisError, list_voices, synthesize
from vasa3d.audio.visemes import MOUTH, mouth_curves, mouth_opening, speech_motion, viseme_class

TEXT = "Bob bought a big map, and we were happy to pay."


@pytest.mark.parametrize("voice", ["en-us", "de"])
def test_audio_and_monotonic_phonemes_cover_the_clip(voice):
    clip = synthesize(TEXT, voice=voice)
    assert clip.sample_rate == 22050 and clip.waveform.dtype == np.float32 and clip.duration_s > 1.5
    assert np.abs(clip.waveform).max() > 0.05
    starts = np.array([p.start_s for p in clip.phonemes])
    ends = np.array([p.end_s for p in clip.phonemes])
    assert len(clip.phonemes) > 20 and (ends > starts).all()
    np.testing.assert_allclose(starts[1:], ends[:-1])  # contiguous, in time order
    assert starts[0] < 0.05 and ends[-1] == pytest.approx(clip.duration_s)
    assert not any(p.symbol.startswith("(") for p in clip.phonemes)


def test_rate_changes_duration_and_voices_are_listed():
    slow, fast = synthesize(TEXT, rate_wpm=110), synthesize(TEXT, rate_wpm=260)
    assert slow.duration_s > 1.6 * fast.duration_s
    languages = {v["language"] for v in list_voices()}
    assert {"en-us", "en-gb", "de", "cmn"} <= languages
    assert synthesize("hello", voice="en-gb+f3").duration_s > 0.2
    with pytest.raises(SpeechSynthesisError, match="unknown voice"):
        synthesize("hello", voice="klingon-xx")


def test_viseme_classes():
    assert [viseme_class(s) for s in ("p", "b", "m", "f", "'u:", "w", "'aa", "i:", "_:", "'aI")] == [
        "bilabial", "bilabial", "bilabial", "labiodental", "round_close", "w", "open", "spread", "silence", "open"]


def test_bilabials_close_and_the_mouth_moves_smoothly():
    clip = synthesize("Papa, Bob, mama, pop, ah, father.", voice="en-us")
    fps = 25.0
    latent = speech_motion(clip, fps=fps, dim=16, seed=0, articulation=1.0, energy_modulation=False)
    frames = round(clip.duration_s * fps)
    assert latent.dyn.shape == (frames, 16) and latent.pose.shape == (frames, 6) and latent.gaze.shape == (frames, 2)
    opening = mouth_opening(latent).numpy()

    def frames_of(kind):  # frames whose centre lies in the middle of a phoneme of that class
        out = []
        for p in clip.phonemes:
            if viseme_class(p.symbol) == kind and p.end_s - p.start_s > 0.04:
                centre = 0.5 * (p.start_s + p.end_s)
                out.append(min(int(centre * fps), frames - 1))
        return out

    bilabial, vowel = frames_of("bilabial"), frames_of("open")
    assert len(bilabial) >= 4 and len(vowel) >= 3
    assert opening[bilabial].mean() < 0.5 * opening[vowel].mean()
    # smooth: no step (the step function of the same targets jumps much further per frame)
    jaw = latent.dyn[:, MOUTH.index("jaw_open")].numpy()
    step = mouth_curves(clip.phonemes, clip.duration_s, fps, frames, coarticulation=False)[:, 0]
    assert np.abs(np.diff(jaw)).max() < 0.25
    assert np.abs(np.diff(jaw)).max() < 0.6 * np.abs(np.diff(step)).max()
