"""Test material: espeak-ng words separated by silences, with each word's sounding span."""

import numpy as np

from vasa3d.audio.speech import synthesize

WORDS = ["hello", "morning", "banana", "window", "seven"]


def words_with_pauses(words, pause_s=0.7, voice="en-us"):
    """(waveform, sample_rate, [(start_s, end_s)] of each word's sounding phonemes)."""
    parts, spans, offset, sample_rate = [], [], 0, 22050
    silence = np.zeros(int(pause_s * sample_rate), np.float32)
    parts.append(silence)
    offset += len(silence)
    for word in words:
        clip = synthesize(word, voice=voice)
        sounding = [p for p in clip.phonemes if not p.symbol.startswith("_")]
        spans.append((offset / sample_rate + sounding[0].start_s, offset / sample_rate + sounding[-1].end_s))
        parts += [clip.waveform, silence]
        offset += len(clip.waveform) + len(silence)
    return np.concatenate(parts), sample_rate, spans
