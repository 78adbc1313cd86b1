"""US-English phone recognition with timings (pocketsphinx), and phones -> a reference mouth motion.

pocketsphinx 5.1.1's wheel ships a US-English acoustic model trained on recorded speech and a phone
language model; :func:`recognize_phones` runs its all-phone decoder
(``Decoder(hmm=en-us, allphone=en-us-phone.lm.bin, lw=2.0, beam=pbeam=1e-20, samprate=16000)``)
on 16 kHz 16-bit PCM and returns CMU/ARPAbet phones (no stress marks; ``SIL`` for silence, ``+NSN+``
style fillers for noise) with their spans in seconds (pocketsphinx counts 10 ms frames;
``end_frame`` is inclusive). The decoder is built once per process. Nothing is downloaded.

:data:`ARPABET_TO_ESPEAK` maps each phone to an espeak-ng mnemonic, so the recognised phones drive the
same viseme machinery (``vasa3d.audio.visemes``: viseme classes, dominance-based coarticulation,
frame averaging) as synthesised speech: :func:`phone_motion` gives a reference ``MotionLatent`` for a
recording, e.g. to score lip-sync against phones rather than loudness alone.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vasa3d.audio.speech import Phoneme, SpeechClip
from vasa3d.motion.latent import MotionLatent

DECODER_SAMPLE_RATE = 16000
FRAME_S = 0.01  # pocketsphinx's frame shift
SILENCE = "SIL"

# CMU / ARPAbet (the 39 phones of cmudict and pocketsphinx's en-us model) -> espeak-ng mnemonic
ARPABET_TO_ESPEAK: dict[str, str] = {
    # vowels; AH covers both schwa and STRUT in cmudict, so it takes a mid vowel
    "AA": "A:", "AE": "a", "AH": "3", "AO": "O:", "AW": "aU", "AY": "aI", "EH": "E", "ER": "3:", "EY": "eI",
    "IH": "I", "IY": "i:", "OW": "oU", "OY": "OI", "UH": "U", "UW": "u:",
    # consonants
    "B": "b", "CH": "tS", "D": "d", "DH": "D", "F": "f", "G": "g", "HH": "h", "JH": "dZ", "K": "k", "L": "l",
    "M": "m", "N": "n", "NG": "N", "P": "p", "R": "r", "S": "s", "SH": "S", "T": "t", "TH": "T", "V": "v",
    "W": "w", "Y": "j", "Z": "z", "ZH": "Z",
    SILENCE: "_",
}  # fmt: skip

_LOCK = threading.Lock()
_DECODER = None


class PhoneRecognitionUnavailableError(RuntimeError):
    """The pocketsphinx wheel (and its US-English model) is not installed."""


class PhoneSpan(NamedTuple):
    """One recognised phone: ARPAbet symbol (``SIL`` = silence, ``+NSN+`` etc. = noise) and its span, seconds."""

    phone: str
    start_s: float
    end_s: float


def model_dir() -> Path:
    """pocketsphinx's shipped US-English model folder (``.../pocketsphinx/model/en-us``)."""
    spec = importlib.util.find_spec("pocketsphinx")
    if spec is None or not spec.submodule_search_locations:
        raise PhoneRecognitionUnavailableError("phone recognition needs pocketsphinx: "
                                                "`pip install pocketsphinx==5.1.1`")
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "en-us"
    for part in ("en-us", "en-us-phone.lm.bin"):
        if not (path / part).exists():
            raise PhoneRecognitionUnavailableError(f"pocketsphinx is installed but {path / part} is missing; "
                                                   "reinstall pocketsphinx==5.1.1")
    return path


def _decoder():
    global _DECODER
    if _DECODER is None:
        from pocketsphinx import Decoder

        path = model_dir()
        _DECODER = Decoder(hmm=str(path / "en-us"), allphone=str(path / "en-us-phone.lm.bin"), lw=2.0, beam=1e-20,
                           pbeam=1e-20, samprate=DECODER_SAMPLE_RATE, loglevel="FATAL")
    return _DECODER


def recognize_phones(waveform: np.ndarray, sample_rate: int) -> list[PhoneSpan]:
    """US-English phones with timings of mono ``waveform [N]`` (``[-1, 1]``, any rate; resampled to 16 kHz).

    Returns contiguous :class:`PhoneSpan` s in time order, silences (``SIL``) and fillers included.
    Trained on US English: on other languages it returns the nearest English phones.
    """
    from vasa3d.audio.io import mono_at

    samples = mono_at(waveform, sample_rate, DECODER_SAMPLE_RATE, "phone recognition")
    if samples.size < DECODER_SAMPLE_RATE // 10:
        raise ValueError(f"phone recognition: {samples.size / DECODER_SAMPLE_RATE:.3f} s of audio; give at least 0.1 s")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with _LOCK:
        decoder = _decoder()
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        segments = [(seg.word, seg.start_frame, seg.end_frame) for seg in decoder.seg()]
    return [PhoneSpan(word, start * FRAME_S, (end + 1) * FRAME_S) for word, start, end in segments if end >= start]


def espeak_symbol(phone: str) -> str:
    """The espeak-ng mnemonic for an ARPAbet phone (stress digits ignored: ``AH0`` -> ``3``); fillers
    (``+NSN+``, ``+SPN+``, ``<sil>``, ...) and ``SIL`` -> ``_`` (silence)."""
    base = phone.upper().rstrip("012")
    if base in ARPABET_TO_ESPEAK:
        return ARPABET_TO_ESPEAK[base]
    if base.startswith(("+", "<", "[")) or base in ("", "SIL", "SP", "NSN", "SPN"):
        return "_"
    raise ValueError(f"unknown ARPAbet phone {phone!r}; known: {' '.join(sorted(ARPABET_TO_ESPEAK))}")


def phone_viseme(phone: str) -> str:
    """The viseme class (``vasa3d.audio.visemes.VISEMES``) of an ARPAbet phone: ``M`` -> ``bilabial``."""
    from vasa3d.audio.visemes import viseme_class

    return viseme_class(espeak_symbol(phone))


def phonemes_from_phones(phones: list[PhoneSpan] | list[tuple[str, float, float]]) -> list[Phoneme]:
    """Recognised phones as espeak-mnemonic :class:`Phoneme` s (for ``visemes.mouth_curves`` / ``speech_motion``)."""
    return [Phoneme(espeak_symbol(phone), float(start), float(end)) for phone, start, end in phones if end > start]


def phone_motion(waveform: np.ndarray, sample_rate: int, fps: float = 25.0, num_frames: int | None = None,
                 phones: list[PhoneSpan] | None = None, dim: int = 16, seed: int = 0,
                 articulation: float = 1.0) -> MotionLatent:
    """A reference talking ``MotionLatent [T]`` for a recording, its mouth driven by recognised phones.

    Args:
        waveform: mono audio ``[N]`` in ``[-1, 1]``.
        sample_rate: samples per second.
        fps: video frame rate (frame t spans ``[t / fps, (t + 1) / fps)``).
        num_frames: T; default ``round(duration * fps)``.
        phones: already recognised phones; None runs :func:`recognize_phones`.
        dim: D of ``dyn``.
        seed: head motion and blinks (see ``visemes.speech_motion``); the mouth does not depend on it.
        articulation: scale of the mouth targets (1 = the viseme table's).
    """
    from vasa3d.audio.visemes import speech_motion

    waveform = np.asarray(waveform, dtype=np.float32)
    phones = recognize_phones(waveform, sample_rate) if phones is None else phones
    clip = SpeechClip(waveform, int(sample_rate), phonemes_from_phones(phones), voice="recorded")
    return speech_motion(clip, fps=fps, dim=dim, seed=seed, num_frames=num_frames, articulation=articulation)
