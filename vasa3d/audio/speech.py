"""Speech synthesis with phoneme timings: espeak-ng (shipped by ``espeakng_loader``) through ctypes.

The engine is initialised once per process in synchronous mode with phoneme events
(``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, espeakINITIALIZE_PHONEME_EVENTS)``, 22050 Hz);
a synth callback collects the 16-bit PCM and the events. Phoneme events (type 7) carry the
mnemonic in ``id.string`` and their start in ``sample`` (checked: ``sample`` counts output samples,
``audio_position`` the same in ms); a phoneme ends where the next phoneme, or the utterance, begins.
espeak-ng is global state: every call holds one process-wide lock.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT {PLAYBACK, RETRIEVAL, SYNCHRONOUS, SYNCH_PLAYBACK}
INITIALIZE_PHONEME_EVENTS = 0x0001
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_END, EVENT_MSG_TERMINATED, EVENT_PHONEME = 0, 1, 5, 6, 7
POS_CHARACTER, CHARS_UTF8 = 1, 1
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` (speak_lib.h): 40 bytes on x86_64, ``id`` at offset 32."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class SpeechSynthesisError(RuntimeError):
    """espeak-ng could not be loaded or could not speak the request."""


@dataclass(frozen=True)
class Phoneme:
    """One phoneme: espeak's mnemonic (stress marks ``'`` ``,`` kept; ``_`` is a pause) and its span, seconds."""

    symbol: str
    start_s: float
    end_s: float


@dataclass
class SpeechClip:
    """Synthesised speech: mono float32 ``waveform [N]`` at ``sample_rate`` with its phoneme timings."""

    waveform: np.ndarray
    sample_rate: int
    phonemes: list[Phoneme] = field(default_factory=list)
    text: str = ""
    voice: str = ""

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / self.sample_rate


class _Engine:
    """The process's one espeak-ng instance."""

    lock = threading.RLock()
    _instance: "_Engine | None" = None

    def __init__(self) -> None:
        try:
            import espeakng_loader

            self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (ImportError, OSError, RuntimeError) as error:
            raise SpeechSynthesisError(f"espeak-ng: cannot load the library shipped by espeakng_loader ({error}); "
                                       "install it with `pip install espeakng-loader==0.2.4`") from error
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(),
                                                 INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise SpeechSynthesisError(f"espeak-ng: initialisation failed (code {self.sample_rate}) with data at "
                                       f"{data_path}; reinstall espeakng-loader")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []
        self._callback = _CALLBACK(self._on_synth)  # keep a reference: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "_Engine":
        with cls.lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _on_synth(self, wav, count, events) -> int:
        if count > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            event = events[i]
            symbol = event.id.string.decode("utf-8", "replace") if event.type == EVENT_PHONEME else ""
            self._events.append((event.type, event.sample, symbol))
            i += 1
        return 0

    def speak(self, text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int,
              seed: int | None) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
        lib = self.lib
        if lib.espeak_SetVoiceByName(voice.encode()) != 0 and lib.espeak_SetVoiceByName(_resolve(voice)) != 0:
            raise SpeechSynthesisError(f"espeak-ng: unknown voice {voice!r}; pick one of list_voices() "
                                       "(e.g. 'en-us', 'en-gb', 'de', 'cmn'; variants as 'en-us+f3')")
        for param, value in ((PARAM_RATE, rate_wpm), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range),
                             (PARAM_VOLUME, 100)):
            lib.espeak_SetParameter(param, int(value), 0)
        lib.espeak_ng_SetRandSeed(0 if seed is None else int(seed))
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        status = lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if status != 0:
            raise SpeechSynthesisError(f"espeak-ng: synthesis of {text[:40]!r} failed (status {status})")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return pcm, self._events


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50, pitch_range: int = 50,
               seed: int | None = None) -> SpeechClip:
    """Speak ``text``: a ``SpeechClip`` (float32 waveform at espeak's 22050 Hz, phonemes with their spans).

    ``rate_wpm``: words per minute (80-450); ``pitch`` and ``pitch_range``: 0-100 (50 = the voice's
    default). ``seed`` seeds espeak-ng's noise generator (None = 0). Caveat, measured: the waveform also
    depends on a process-wide state that espeak-ng never resets (its pitch flutter phase; not even
    ``espeak_Terminate`` clears it), so a call is bitwise reproducible only as the same call sequence in a
    fresh process (``SpeechMotionDataModule`` synthesises in fresh worker processes for that reason);
    phoneme starts move by at most a few ms, the text's phoneme sequence never changes. Phonemes are contiguous, in time order, and cover ``[first start, duration]``.
    """
    if not text.strip():
        raise ValueError("synthesize: the text is empty; give at least one word")
    with _Engine.lock:
        engine = _Engine.get()
        pcm, events = engine.speak(text, voice, rate_wpm, pitch, pitch_range, seed)
        sample_rate = engine.sample_rate
    waveform = pcm.astype(np.float32) / 32768.0
    total = len(waveform)
    # "(en)"-style events mark a language switch, not a sound
    starts = [(min(max(sample, 0), total), symbol) for kind, sample, symbol in events
              if kind == EVENT_PHONEME and symbol and not symbol.startswith("(")]
    phonemes = []
    for i, (start, symbol) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else total
        if end > start:
            phonemes.append(Phoneme(symbol, start / sample_rate, end / sample_rate))
    return SpeechClip(waveform, sample_rate, phonemes, text, voice)


def _resolve(voice: str) -> bytes:
    """espeak-ng's name for ``voice`` given as a language code (``en-gb``) or a voice name, variant kept."""
    base, _, variant = voice.partition("+")
    for entry in list_voices():
        if base.lower() in (entry["language"].lower(), entry["name"].lower(), entry["identifier"].lower()):
            name = entry["identifier"].rsplit("/", 1)[-1]
            return (name + ("+" + variant if variant else "")).encode()
    return voice.encode()


def list_voices() -> list[dict[str, str]]:
    """espeak-ng's voices: dicts with ``name``, ``identifier`` (e.g. ``gmw/en-US``), ``language`` (e.g. ``en-us``,
    the value ``synthesize(voice=...)`` takes) and ``gender``."""
    with _Engine.lock:
        engine = _Engine.get()
        voices = engine.lib.espeak_ListVoices(None)
        out, i = [], 0
        while voices[i]:
            voice = voices[i].contents
            languages = ctypes.string_at(voice.languages + 1).decode("utf-8", "replace") if voice.languages else ""
            out.append({"name": (voice.name or b"").decode(), "identifier": (voice.identifier or b"").decode(),
                        "language": languages, "gender": {1: "male", 2: "female"}.get(voice.gender, "")})
            i += 1
    return out
