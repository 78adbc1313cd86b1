"""pocketsphinx US-English phone recognition with timings, ARPAbet -> visemes, and the phone-driven reference motion."""

import numpy as np
import pytest
from speech_words import WORDS, words_with_pauses

from vasa3d.audio.phones import (
    ARPABET_TO_ESPEAK, PhoneSpan, espeak_symbol, phone_motion, phone_viseme, phonemes_from_phones, recognize_phones)
from vasa3d.audio.visemes import VISEMES, mouth_opening

FPS = 25.0
VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}


@pytest.fixture(scope="module")
def speech():
    waveform, sample_rate, spans = words_with_pauses(WORDS)
    return waveform, sample_rate, spans, recognize_phones(waveform, sample_rate)


def test_every_phone_has_a_viseme_grouped_by_articulation():
    assert len(ARPABET_TO_ESPEAK) == 40  # cmudict's 39 phones and SIL
    for phone in ARPABET_TO_ESPEAK:
        assert phone_viseme(phone) in VISEMES
    groups = {"bilabial": "M B P", "labiodental": "F V", "dental": "TH DH", "sibilant": "S Z",
              "postalveolar": "SH ZH CH JH", "round_close": "UW UH", "w": "W", "spread": "IY IH",
              "silence": "SIL +NSN+ +SPN+ <sil>"}
    for viseme, phones in groups.items():
        assert {phone_viseme(p) for p in phones.split()} == {viseme}, viseme
    assert phone_viseme("AA1") == "open" and phone_viseme("ay") == "open"  # stress digits, case
    assert espeak_symbol("OW") == "oU" and phone_viseme("OW") == "round_open"  # diphthong: its first half
    with pytest.raises(ValueError, match="unknown ARPAbet phone 'QQ'"):
        espeak_symbol("QQ")


def test_phones_come_in_order_with_plausible_timings(speech):
    waveform, sample_rate, spans, phones = speech
    duration = len(waveform) / sample_rate
    assert all(isinstance(p, PhoneSpan) for p in phones)
    starts, ends = np.array([p.start_s for p in phones]), np.array([p.end_s for p in phones])
    assert (ends > starts).all() and (starts[1:] >= ends[:-1] - 1e-9).all()
    assert starts[0] == 0.0 and abs(ends[-1] - duration) < 0.05
    sounding = [p for p in phones if espeak_symbol(p.phone) != "_"]
    assert len(sounding) >= 2 * len(WORDS) and {p.phone for p in sounding} & VOWELS
    # sounding phones lie in the words (with 100 ms slack), silences fill the pauses
    def in_words(t):
        return any(start - 0.1 <= t <= end + 0.1 for start, end in spans)

    assert all(in_words(0.5 * (p.start_s + p.end_s)) for p in sounding)
    every_word_heard = [any(start - 0.1 <= 0.5 * (p.start_s + p.end_s) <= end + 0.1 for p in sounding)
                        for start, end in spans]
    assert all(every_word_heard)
    grid = np.arange(0, duration, 0.01)
    sounding_at = np.zeros(grid.size, bool)
    for p in sounding:
        sounding_at |= (grid >= p.start_s) & (grid < p.end_s)
    pauses = np.array([not in_words(t) for t in grid])
    assert sounding_at[pauses].mean() < 0.05
    words_core = np.array([any(s + 0.05 <= t <= e - 0.05 for s, e in spans) for t in grid])
    assert sounding_at[words_core].mean() > 0.5


def test_phone_motion_opens_the_mouth_in_speech_and_closes_it_in_pauses(speech):
    waveform, sample_rate, spans, phones = speech
    frames = int(round(len(waveform) / sample_rate * FPS))
    motion = phone_motion(waveform, sample_rate, FPS, frames, phones=phones)
    assert len(motion) == frames
    opening = mouth_opening(motion).numpy()
    centres = (np.arange(frames) + 0.5) / FPS
    in_words = np.zeros(frames, bool)
    for start, end in spans:
        in_words |= (centres >= start) & (centres < end)
    far = np.array([all(abs(c - s) > 0.2 and abs(c - e) > 0.2 for s, e in spans) for c in centres]) & ~in_words
    assert opening[in_words].mean() > 0.1 and opening[far].max() < 0.05
    assert (opening[in_words].mean() - opening[far].mean()) / opening.std() > 1.0
    # the mouth does not depend on the head-motion seed
    other = phone_motion(waveform, sample_rate, FPS, frames, phones=phones, seed=5)
    np.testing.assert_allclose(mouth_opening(other).numpy(), opening, atol=1e-5)


def test_bilabial_closes_the_lips_in_the_phone_reference():
    phones = [PhoneSpan("SIL", 0.0, 0.3), PhoneSpan("AA", 0.3, 0.5), PhoneSpan("M", 0.5, 0.62),
              PhoneSpan("AA", 0.62, 0.82), PhoneSpan("SIL", 0.82, 1.2)]
    assert [p.symbol for p in phonemes_from_phones(phones)] == ["_", "A:", "m", "A:", "_"]
    waveform = np.zeros(int(1.2 * 16000), np.float32)
    opening = mouth_opening(phone_motion(waveform, 16000, 100.0, 120, phones=phones)).numpy()
    assert opening[40] > 0.25 and opening[72] > 0.25 and opening[56] < 0.5 * opening[40]


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="mono"):
        recognize_phones(np.zeros((2, 16000), np.float32), 16000)
    with pytest.raises(ValueError, match="at least 0.1 s"):
        recognize_phones(np.zeros(100, np.float32), 16000)
