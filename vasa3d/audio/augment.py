"""Audio augmentation for speech-motion training: rooms, noise, channels, levels and voices.

Each augmentation changes the sound of an utterance but not its timing, so the motion made from the
clean phonemes stays the target. :class:`AudioAugment` applies each one with its own probability, in
the order a recording chain would: the speaker (pitch shift, vocal-tract length), the microphone
(tilt EQ), the room (reverb), the surroundings (coloured noise, babble), the line (telephone band,
8 kHz round trip), the recorder (gain with soft clipping). All draws come from the ``numpy``
``Generator`` given, so a seed fixes the result. Waveforms are mono float ``[N]`` in ``[-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.signal import butter, fftconvolve, sosfiltfilt

NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0}  # power spectrum ~ 1 / f^beta


def active_power(waveform: np.ndarray, sample_rate: int, below_peak_db: float = 30.0) -> float:
    """Mean power of the 20 ms blocks within ``below_peak_db`` of the loudest one (speech, not pauses)."""
    block = max(1, int(0.02 * sample_rate))
    usable = len(waveform) // block * block
    if usable == 0:
        return float(np.mean(np.square(waveform, dtype=np.float64))) if len(waveform) else 0.0
    power = np.mean(np.square(waveform[:usable].reshape(-1, block), dtype=np.float64), axis=1)
    loud = power >= power.max() * 10 ** (-below_peak_db / 10)
    return float(power[loud].mean())


def synthetic_rir(rng: np.random.Generator, sample_rate: int, rt60_s: float) -> np.ndarray:
    """A room impulse response ``[n]``: direct path, a few early reflections and an exponentially
    decaying diffuse tail whose energy falls 60 dB in ``rt60_s`` (Polack's model)."""
    length = max(2, int(min(1.2 * rt60_s, 1.0) * sample_rate))
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-3.0 * math.log(10) * t / rt60_s)  # amplitude: -60 dB at rt60
    onset = int(rng.uniform(0.002, 0.008) * sample_rate)  # the diffuse part starts after the direct path
    tail[:onset] = 0.0
    rir = tail * rng.uniform(0.15, 0.4)
    rir[0] = 1.0
    for _ in range(4):
        delay = int(rng.uniform(0.002, 0.02) * sample_rate)
        if delay < length:
            rir[delay] += rng.uniform(-0.5, 0.5)
    return rir / np.sqrt(np.sum(rir**2))


def coloured_noise(rng: np.random.Generator, length: int, beta: float) -> np.ndarray:
    """Unit-power noise ``[length]`` with power spectrum ~ ``1 / f^beta`` (0 white, 1 pink, 2 brown, -1 blue)."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / freqs ** (beta / 2), n=length)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, sample_rate: int) -> np.ndarray:
    """``speech + a * noise`` with ``a`` set so the speech's active power over the noise's is ``snr_db``."""
    noise_power = np.mean(np.square(noise, dtype=np.float64)) + 1e-20
    scale = math.sqrt(active_power(speech, sample_rate) / noise_power / 10 ** (snr_db / 10))
    return speech + scale * noise


def babble(rng: np.random.Generator, others: Sequence[np.ndarray], length: int, talkers: int) -> np.ndarray:
    """Unit-power babble ``[length]``: ``talkers`` other utterances at equal power, each looped from a random start."""
    out = np.zeros(length)
    for k in rng.choice(len(others), size=min(talkers, len(others)), replace=False):
        source = np.asarray(others[k], np.float64)
        looped = np.resize(np.roll(source, -int(rng.integers(len(source)))), length)
        out += looped / (np.sqrt(np.mean(looped**2)) + 1e-12)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def band_pass(waveform: np.ndarray, sample_rate: int, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """The telephone band: 4th-order Butterworth band-pass, zero phase."""
    high_hz = min(high_hz, 0.45 * sample_rate)
    sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, waveform)


def round_trip(waveform: np.ndarray, sample_rate: int, via_hz: int = 8000) -> np.ndarray:
    """Down to ``via_hz`` and back up (loses everything above ``via_hz / 2``)."""
    from vasa3d.audio.io import resample

    down = resample(np.asarray(waveform, np.float32), sample_rate, via_hz)
    up = resample(down, via_hz, sample_rate)
    return np.resize(up, len(waveform)) if len(up) != len(waveform) else up


def tilt_eq(waveform: np.ndarray, sample_rate: int, db_per_octave: float, pivot_hz: float = 1000.0,
            max_db: float = 18.0) -> np.ndarray:
    """A microphone's colouring: ``db_per_octave`` of tilt around ``pivot_hz``, capped at ``±max_db``."""
    spectrum = np.fft.rfft(waveform)
    freqs = np.maximum(np.fft.rfftfreq(len(waveform), 1.0 / sample_rate), 20.0)
    gain_db = np.clip(db_per_octave * np.log2(freqs / pivot_hz), -max_db, max_db)
    return np.fft.irfft(spectrum * 10 ** (gain_db / 20), n=len(waveform))


def set_level(waveform: np.ndarray, peak_dbfs: float, drive_db: float = 0.0) -> np.ndarray:
    """Scale so the peak reads ``peak_dbfs + drive_db``, then soft-clip with ``tanh`` (peaks stay below 1)."""
    peak = np.abs(waveform).max()
    if peak <= 0:
        return waveform
    return np.tanh(waveform / peak * 10 ** ((peak_dbfs + drive_db) / 20))


def vocal_tract_length(waveform: np.ndarray, sample_rate: int, alpha: float, n_fft: int = 512) -> np.ndarray:
    """VTLP: the magnitude spectrum warped along frequency by ``alpha`` (``> 1`` raises the formants, a
    shorter vocal tract), phase kept; same length."""
    import librosa

    stft = librosa.stft(np.asarray(waveform, np.float32), n_fft=n_fft, hop_length=n_fft // 4)
    bins = np.arange(stft.shape[0], dtype=np.float64)
    source = np.clip(bins / alpha, 0, stft.shape[0] - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, stft.shape[0] - 1)
    frac = (source - low)[:, None]
    magnitude = np.abs(stft)
    warped = (1 - frac) * magnitude[low] + frac * magnitude[high]
    out = librosa.istft(warped * np.exp(1j * np.angle(stft)), hop_length=n_fft // 4, length=len(waveform))
    return out.astype(np.float64)


def pitch_shift(waveform: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Pitch moved by ``semitones`` at the same duration (librosa's phase vocoder + resampling)."""
    import librosa

    return librosa.effects.pitch_shift(np.asarray(waveform, np.float32), sr=sample_rate,
                                       n_steps=float(semitones)).astype(np.float64)


class AudioAugment:
    """Random recording conditions, each applied with its own probability.

    Args:
        p_pitch_shift: probability of a pitch shift of ``pitch_semitones`` (uniform, either sign).
        p_vtlp: probability of a vocal-tract-length warp by a factor in ``vtlp_range``.
        p_mic_tilt: probability of a microphone tilt EQ in ``tilt_db_per_octave`` (either sign).
        p_reverb: probability of a synthetic room, RT60 uniform in ``rt60_range_s``.
        p_noise: probability of coloured noise (white, pink, brown or blue) at an SNR in ``snr_range_db``.
        p_babble: probability of babble from 3-6 other utterances at an SNR in ``snr_range_db``.
        p_telephone: probability of the telephone band (300-3400 Hz).
        p_resample_8k: probability of a round trip through 8 kHz.
        p_gain: probability of a peak level in ``gain_range_dbfs`` with up to ``max_drive_db`` of soft clipping.
        pitch_semitones: largest pitch shift, semitones.
        vtlp_range: (low, high) frequency warp factors.
        tilt_db_per_octave: largest microphone tilt, dB per octave.
        rt60_range_s: (low, high) reverberation time, seconds.
        snr_range_db: (low, high) signal-to-noise ratio, dB.
        gain_range_dbfs: (low, high) peak level, dBFS.
        max_drive_db: largest overdrive into the soft clipper, dB.
    """

    NAMES = ("pitch_shift", "vtlp", "mic_tilt", "reverb", "noise", "babble", "telephone", "resample_8k", "gain")

    def __init__(self, p_pitch_shift: float = 0.0, p_vtlp: float = 0.0, p_mic_tilt: float = 0.0,
                 p_reverb: float = 0.0, p_noise: float = 0.0, p_babble: float = 0.0, p_telephone: float = 0.0,
                 p_resample_8k: float = 0.0, p_gain: float = 0.0, pitch_semitones: float = 3.0,
                 vtlp_range: tuple[float, float] = (0.88, 1.12), tilt_db_per_octave: float = 4.0,
                 rt60_range_s: tuple[float, float] = (0.1, 0.8), snr_range_db: tuple[float, float] = (0.0, 30.0),
                 gain_range_dbfs: tuple[float, float] = (-35.0, -3.0), max_drive_db: float = 9.0) -> None:
        self.probability = {"pitch_shift": p_pitch_shift, "vtlp": p_vtlp, "mic_tilt": p_mic_tilt,
                            "reverb": p_reverb, "noise": p_noise, "babble": p_babble, "telephone": p_telephone,
                            "resample_8k": p_resample_8k, "gain": p_gain}
        for name, p in self.probability.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AudioAugment: p_{name}={p} must be a probability in [0, 1]")
        self.pitch_semitones, self.vtlp_range = float(pitch_semitones), tuple(vtlp_range)
        self.tilt_db_per_octave, self.rt60_range_s = float(tilt_db_per_octave), tuple(rt60_range_s)
        self.snr_range_db, self.gain_range_dbfs = tuple(snr_range_db), tuple(gain_range_dbfs)
        self.max_drive_db = float(max_drive_db)

    @classmethod
    def from_config(cls, config: dict | None) -> "AudioAugment | None":
        """From a dict of ``__init__`` arguments (None or empty = no augmentation); unknown keys are an error."""
        if not config:
            return None
        import inspect

        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"augment: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**config)

    def __call__(self, waveform: np.ndarray, sample_rate: int, rng: np.random.Generator,
                 others: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, dict[str, float]]:
        """``(augmented float32 [N], what was applied)``; ``others``: utterances for babble (none: no babble)."""
        x = np.asarray(waveform, np.float64)
        applied: dict[str, float] = {}
        draw = {name: rng.random() < p for name, p in self.probability.items()}  # one draw each, fixed order
        if draw["pitch_shift"]:
            applied["pitch_shift"] = rng.uniform(-self.pitch_semitones, self.pitch_semitones)
            x = pitch_shift(x, sample_rate, applied["pitch_shift"])
        if draw["vtlp"]:
            applied["vtlp"] = rng.uniform(*self.vtlp_range)
            x = vocal_tract_length(x, sample_rate, applied["vtlp"])
        if draw["mic_tilt"]:
            applied["mic_tilt"] = rng.uniform(-self.tilt_db_per_octave, self.tilt_db_per_octave)
            x = tilt_eq(x, sample_rate, applied["mic_tilt"])
        if draw["reverb"]:
            applied["reverb"] = rng.uniform(*self.rt60_range_s)
            power = active_power(x, sample_rate)
            x = fftconvolve(x, synthetic_rir(rng, sample_rate, applied["reverb"]))[:len(x)]
            x *= math.sqrt(power / (active_power(x, sample_rate) + 1e-20))
        if draw["noise"]:
            colour = list(NOISE_COLOURS)[int(rng.integers(len(NOISE_COLOURS)))]
            applied["noise"] = rng.uniform(*self.snr_range_db)
            applied["noise_beta"] = NOISE_COLOURS[colour]
            x = mix_at_snr(x, coloured_noise(rng, len(x), NOISE_COLOURS[colour]), applied["noise"], sample_rate)
        if draw["babble"] and len(others) > 0:
            applied["babble"] = rng.uniform(*self.snr_range_db)
            x = mix_at_snr(x, babble(rng, others, len(x), int(rng.integers(3, 7))), applied["babble"], sample_rate)
        if draw["telephone"]:
            applied["telephone"] = 1.0
            x = band_pass(x, sample_rate)
        if draw["resample_8k"]:
            applied["resample_8k"] = 1.0
            x = round_trip(x, sample_rate, 8000)
        if draw["gain"]:
            applied["gain"] = rng.uniform(*self.gain_range_dbfs)
            applied["drive"] = rng.uniform(0.0, self.max_drive_db) if rng.random() < 0.3 else 0.0
            x = set_level(x, applied["gain"], applied["drive"])
        else:
            peak = np.abs(x).max()
            x = x / peak * 0.9 if peak > 0.99 else x  # noise can push past full scale: keep it in range
        return x.astype(np.float32), applied
