"""Phonemes -> mouth motion with coarticulation, plus head motion and blinks: a ``MotionLatent`` per clip.

Mouth: each phoneme (espeak mnemonic) has a viseme target on the mouth controls of the rig
(``jaw_open``, ``lip_pucker``, ``lip_stretch``, ``upper_lip_raise``, ``lower_lip_depress``) and a
per-control dominance (Cohen & Massaro 1993): the dominance is flat over the middle of the phoneme
and decays exponentially outside it, faster after it (carry-over) than before it (anticipation), and
each control is the dominance-weighted mean of the targets, so a bilabial's lip closure wins over its
neighbours' while its lip rounding is taken from the neighbouring vowels. The blend is evaluated on a
fine time grid, low-passed (muscle response, ~15 ms) and averaged over each video frame's span
``[t / fps, (t + 1) / fps)``, the same frames as ``AudioFeatureExtractor``'s. Speech energy scales the
opening a little. Head pose, gaze, blinks and the slow lip/brow drift come from
``vasa3d.motion.sampling.sample_talking_motion``; stressed vowels add small nods and brow raises.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

from vasa3d.audio.speech import Phoneme, SpeechClip
from vasa3d.motion.latent import MotionLatent
from vasa3d.motion.rig import CONTROL_NAMES, NUM_CONTROLS, latent_from_controls
from vasa3d.motion.sampling import sample_talking_motion

_IDX = {name: i for i, name in enumerate(CONTROL_NAMES)}
MOUTH = ("jaw_open", "lip_pucker", "lip_stretch", "upper_lip_raise", "lower_lip_depress")
MOUTH_CHANNELS = [_IDX[name] for name in MOUTH]

# viseme: (targets for MOUTH, dominance of (jaw, lips)); lips = the four lip controls
VISEMES: dict[str, tuple[tuple[float, ...], tuple[float, float]]] = {
    "silence": ((0.0, 0.0, 0.0, 0.0, 0.0), (1.5, 1.5)),
    "bilabial": ((0.0, 0.05, 0.0, -0.1, -0.15), (5.0, 5.0)),  # p b m: lips pressed shut
    "labiodental": ((0.08, 0.0, 0.05, 0.15, -0.2), (3.0, 4.0)),  # f v: lower lip under the upper teeth
    "dental": ((0.15, 0.0, 0.1, 0.05, 0.05), (1.5, 0.8)),
    "alveolar": ((0.12, 0.0, 0.15, 0.0, 0.05), (1.5, 0.5)),
    "sibilant": ((0.1, 0.0, 0.25, 0.05, 0.05), (2.0, 1.0)),
    "postalveolar": ((0.12, 0.45, 0.0, 0.15, 0.1), (2.0, 2.0)),
    "r": ((0.15, 0.3, 0.0, 0.05, 0.0), (1.0, 1.0)),
    "velar": ((0.2, 0.0, 0.05, 0.0, 0.05), (0.5, 0.3)),
    "w": ((0.1, 0.8, 0.0, 0.0, 0.0), (2.0, 3.0)),
    "j": ((0.12, 0.0, 0.35, 0.0, 0.0), (1.0, 1.0)),
    "open": ((0.65, 0.0, 0.05, 0.1, 0.25), (2.0, 1.0)),
    "mid": ((0.35, 0.0, 0.1, 0.05, 0.15), (1.5, 0.8)),
    "schwa": ((0.25, 0.0, 0.05, 0.0, 0.1), (0.8, 0.5)),
    "spread": ((0.2, 0.0, 0.45, 0.05, 0.1), (1.5, 1.5)),
    "round_open": ((0.4, 0.55, 0.0, 0.05, 0.15), (1.5, 1.5)),
    "round_close": ((0.15, 0.75, 0.0, 0.0, 0.05), (1.5, 2.0)),
    "consonant": ((0.15, 0.0, 0.05, 0.0, 0.05), (0.5, 0.3)),
}
# Every espeak-ng mnemonic is parsed into segments (a base sound + modifiers); each base belongs to one
# articulation group. Consonants by place (lips, teeth, alveolar ridge, palate, velum); vowels by height and
# rounding. A diphthong or a vowel sequence ("aI", "iou", "ja") spans its segments in equal parts.
CONSONANT_GROUPS = {
    "bilabial": "p b m B P",  # B = beta, P = phi
    "labiodental": "f v F",  # F = labiodental nasal
    "dental": "T D",
    "alveolar": "t d n l L *",  # * = tap; L = lateral variants
    "sibilant": "s z ts dz",
    "postalveolar": "S Z tS dZ",
    "r": "r R",
    "velar": "k g N x X G q Q h H ?",  # the back of the mouth: velar, uvular, pharyngeal, glottal
    "j": "j C c J",  # palatal
    "w": "w",
}
VOWEL_GROUPS = {
    "open": "a A & 0 V",
    "mid": "e E 3",
    "schwa": "@",
    "spread": "i I",
    "round_open": "o O Y W 8",  # front rounded mid vowels and barred o included
    "round_close": "u U y",
}
# Marks that refine a base without moving the lips to another group: variants (#, 5), dental [, retroflex .
# and `, palatalised ^ and ;, nasal ~, syllabic or tense -, centralised ", alveolo-palatal \, length :,
# tie _ (t_s).
# A "2" after a vowel marks its reduced (unstressed) form, which is articulated as a schwa.
MODIFIERS = set("#-.[^~`\"25\\;!:_")  # "_" inside a mnemonic ties an affricate (t_s)
ASPIRATION = set("hH")  # after a consonant: aspirated or emphatic (ph, kh, tS;h, dH)
BASE_GROUP = {base: group for groups in (CONSONANT_GROUPS, VOWEL_GROUPS) for group, bases in groups.items()
              for base in bases.split()}
_BASES = sorted(BASE_GROUP, key=len, reverse=True)  # longest match first: "tS" before "t"
BOUNDARY = "boundary"  # a syllable or tone boundary ("_|"): no mouth target of its own
ANTICIPATION_S, CARRY_OVER_S = 0.07, 0.045  # dominance decay constants before / after a phoneme
REST_DOMINANCE = 0.05  # a weak pull to neutral everywhere
GRID_HZ = 200.0


def parse_phoneme(symbol: str) -> list[str] | None:
    """Articulation groups of an espeak-ng mnemonic's segments, in order; None where a character is unknown.

    ``'aI`` -> ``["open", "spread"]``; ``tS;h`` -> ``["postalveolar"]``; ``@2`` -> ``["schwa"]``;
    ``_:`` -> ``["silence"]``; ``_|`` -> ``["boundary"]`` (no target: the neighbours' targets fill its span).
    """
    text = symbol.lstrip("',=%")
    if not text.strip(":"):
        return [BOUNDARY]  # a bare length or stress mark
    if text.startswith("_"):
        return ["silence"] if text.rstrip(":") == "_" else [BOUNDARY]
    groups: list[str] = []
    vowel_last, i = False, 0
    while i < len(text):
        if text[i] in ASPIRATION and groups and not vowel_last:
            i += 1
            continue
        base = next((b for b in _BASES if text.startswith(b, i)), None)
        if base is not None:
            groups.append(BASE_GROUP[base])
            vowel_last = base in VOWEL_BASES
            i += len(base)
            continue
        char = text[i]
        if char == "2" and vowel_last:
            groups[-1] = "schwa"
        elif char not in MODIFIERS:
            return None
        i += 1
    return groups or [BOUNDARY]


VOWEL_BASES = {base for bases in VOWEL_GROUPS.values() for base in bases.split()}


def unmapped_phonemes(symbols) -> list[str]:
    """The mnemonics among ``symbols`` that :func:`parse_phoneme` cannot map (sorted, unique)."""
    return sorted({s for s in symbols if parse_phoneme(s) is None})


def _strip(symbol: str) -> tuple[str, bool]:
    """(base mnemonic without stress and length marks, stressed)."""
    stressed = symbol.startswith("'")
    base = symbol.lstrip("',=%").rstrip(":;")
    return base, stressed


def viseme_class(symbol: str) -> str:
    """The viseme class of an espeak mnemonic's first segment (``'aI`` -> ``open``, ``p`` -> ``bilabial``,
    ``_:`` -> ``silence``); raises ``KeyError`` for a mnemonic no group covers."""
    groups = parse_phoneme(symbol)
    if groups is None:
        raise KeyError(f"espeak phoneme {symbol!r} has no viseme; add its base to CONSONANT_GROUPS or VOWEL_GROUPS "
                       "in vasa3d/audio/visemes.py")
    return groups[0]


def _segments(phonemes: list[Phoneme]) -> list[tuple[float, float, str, bool]]:
    """(start, end, class, stressed); multi-segment mnemonics (diphthongs) split into equal parts,
    boundaries dropped (an unknown mnemonic, which the data manifest counts, acts as a neutral consonant)."""
    out = []
    for ph in phonemes:
        _, stressed = _strip(ph.symbol)
        groups = parse_phoneme(ph.symbol) or ["consonant"]
        step = (ph.end_s - ph.start_s) / len(groups)
        for k, group in enumerate(groups):
            if group != BOUNDARY:
                out.append((ph.start_s + k * step, ph.start_s + (k + 1) * step, group, stressed and k == 0))
    return out


def _frame_average(values: np.ndarray, grid_hz: float, fps: float, frames: int) -> np.ndarray:
    """Mean of ``values [G, C]`` (sampled at ``(g + 0.5) / grid_hz``) over each frame span ``[t/fps, (t+1)/fps)``."""
    edges = np.arange(frames + 1) / fps * grid_hz
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    grid = np.arange(len(cumulative))

    def integral(x: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(x, grid, cumulative[:, c]) for c in range(values.shape[1])], axis=1)

    return (integral(edges[1:]) - integral(edges[:-1])) / np.maximum(np.diff(edges), 1e-9)[:, None]


def mouth_curves(phonemes: list[Phoneme], duration_s: float, fps: float = 25.0, frames: int | None = None,
                 articulation: float = 1.0, coarticulation: bool = True) -> np.ndarray:
    """Mouth controls ``[T, 5]`` (``MOUTH`` order) per video frame from phoneme timings.

    ``coarticulation=False`` gives the step function of per-phoneme targets (for comparison only).
    """
    frames = int(round(duration_s * fps)) if frames is None else frames
    count = max(1, int(math.ceil(max(duration_s, frames / fps) * GRID_HZ)))
    times = (np.arange(count) + 0.5) / GRID_HZ
    numerator = np.zeros((count, len(MOUTH)))
    denominator = np.full((count, len(MOUTH)), REST_DOMINANCE)
    for start, end, cls, stressed in _segments(phonemes):
        target, (dom_jaw, dom_lips) = VISEMES[cls]
        target = np.array(target) * articulation
        if stressed and cls not in ("silence", "bilabial"):
            target[0] *= 1.15
        dominance = np.array([dom_jaw] + [dom_lips] * 4)
        if coarticulation:
            centre, core = 0.5 * (start + end), 0.25 * (end - start)  # flat over the middle half
            before = np.clip(centre - core - times, 0, None) / ANTICIPATION_S
            after = np.clip(times - centre - core, 0, None) / CARRY_OVER_S
            weight = np.exp(-(before + after))[:, None] * dominance
        else:
            weight = ((times >= start) & (times < end))[:, None] * dominance * 1e3
        numerator += weight * target
        denominator += weight
    values = numerator / denominator
    if coarticulation:
        values = gaussian_filter1d(values, sigma=0.015 * GRID_HZ, axis=0, mode="nearest")
    return _frame_average(values, GRID_HZ, fps, frames) if coarticulation else \
        values[np.minimum(((np.arange(frames) + 0.5) / fps * GRID_HZ).astype(int), count - 1)]


def _frame_energy_db(waveform: np.ndarray, sample_rate: int, fps: float, frames: int) -> np.ndarray:
    hop = sample_rate / fps
    out = np.full(frames, -100.0)
    for t in range(frames):
        span = waveform[int(round(t * hop)): int(round((t + 1) * hop))]
        if len(span):
            out[t] = 20 * np.log10(np.sqrt(np.mean(np.square(span, dtype=np.float64))) + 1e-5)
    return out


def _bumps(times: list[float], frames: int, fps: float, width_s: float, amplitudes: np.ndarray) -> np.ndarray:
    frame_t = (np.arange(frames) + 0.5) / fps
    out = np.zeros(frames)
    for centre, amplitude in zip(times, amplitudes):
        out += amplitude * np.exp(-0.5 * ((frame_t - centre) / width_s) ** 2)
    return out


def speech_motion(
    clip: SpeechClip,
    fps: float = 25.0,
    dim: int = 16,
    seed: int = 0,
    yaw_range_deg: tuple[float, float] = (-15.0, 15.0),
    pitch_range_deg: tuple[float, float] = (-8.0, 8.0),
    num_frames: int | None = None,
    articulation: float | None = None,
    energy_modulation: bool = True,
) -> MotionLatent:
    """A talking ``MotionLatent [T]`` for a synthesised clip, ``T = round(duration * fps)`` (or ``num_frames``).

    Args:
        clip: the speech with its phoneme timings.
        fps: video frame rate (frame t spans ``[t / fps, (t + 1) / fps)``).
        dim: D of ``dyn`` (>= 12: the rig controls first).
        seed: head motion, blinks, gaze and the speaker's articulation style.
        yaw_range_deg / pitch_range_deg: the head's wander range, degrees.
        num_frames: force T (e.g. to match features computed after resampling).
        articulation: scale of the mouth targets; None draws one in [0.8, 1.2] from the seed.
        energy_modulation: louder frames open the mouth a little wider.
    """
    frames = int(round(clip.duration_s * fps)) if num_frames is None else int(num_frames)
    rng = np.random.default_rng([seed, 7])
    base = sample_talking_motion(frames, dim, fps, yaw_range_deg, pitch_range_deg, seed=seed)
    controls = base.dyn[:, :NUM_CONTROLS].double().numpy().copy()
    style = rng.uniform(0.8, 1.2) if articulation is None else articulation
    mouth = mouth_curves(clip.phonemes, clip.duration_s, fps, frames, articulation=style)
    if energy_modulation and frames:
        energy = _frame_energy_db(clip.waveform, clip.sample_rate, fps, frames)
        gain = 1.0 + 0.25 * np.tanh((gaussian_filter1d(energy, 1.0) + 22.0) / 10.0)
        mouth[:, [0, 4]] *= gain[:, None]
    controls[:, MOUTH_CHANNELS] = mouth
    controls[:, [_IDX["smile_left"], _IDX["smile_right"]]] *= 0.5  # speech keeps a mostly neutral smile
    # prosody: stressed vowels nod the head (chin down = +pitch) and sometimes raise the brows
    stressed = [0.5 * (s + e) for s, e, cls, st in _segments(clip.phonemes) if st and cls != "silence"]
    nod = _bumps(stressed, frames, fps, 0.12, rng.uniform(0.5, 2.0, len(stressed)) * math.pi / 180)
    brows = _bumps(stressed, frames, fps, 0.15, rng.uniform(0.0, 0.3, len(stressed)) * (rng.random(len(stressed)) < 0.35))
    controls[:, _IDX["brow_raise_left"]] += brows
    controls[:, _IDX["brow_raise_right"]] += brows
    pose = base.pose.double().numpy().copy()
    pose[:, 0] += nod
    return latent_from_controls(torch.tensor(controls, dtype=torch.float32), torch.tensor(pose, dtype=torch.float32),
                                dim, base.gaze)


def mouth_opening(latent: MotionLatent | Tensor) -> Tensor:
    """Lip aperture proxy ``[...]`` (e.g. ``[T]``): ``jaw_open + 0.3 * (upper_lip_raise + lower_lip_depress)``,
    from a ``MotionLatent`` or its ``dyn [..., D]``; used for lip-sync correlation."""
    dyn = latent.dyn if isinstance(latent, MotionLatent) else latent
    return dyn[..., _IDX["jaw_open"]] + 0.3 * (dyn[..., _IDX["upper_lip_raise"]] + dyn[..., _IDX["lower_lip_depress"]])


class SilenceGate:
    """Voice activity ``[T]`` in [0, 1] → the mouth's gain per frame, causally, so that a stream gated
    window by window gets what the whole would (the online renderer).

    The gain is the activity smoothed over the past ``release_s`` (a one-sided Gaussian: the lips close
    over about that time once speech stops; zero ``4 release_s`` after it) and never below the activity
    itself, so a speech onset opens the mouth at once. Before the first frame, the first frame's activity
    is assumed.
    """

    def __init__(self, fps: float = 25.0, release_s: float = 0.08) -> None:
        sigma = max(release_s * fps, 1e-3)
        weights = np.exp(-0.5 * (np.arange(int(4 * sigma + 0.5) + 1) / sigma) ** 2)
        self.weights = weights / weights.sum()  # weights[k]: of the frame k before
        self.history: np.ndarray | None = None  # the last len(weights) - 1 activities

    def __call__(self, activity: np.ndarray | Tensor) -> np.ndarray:
        """The gain of the next ``len(activity)`` frames."""
        activity = np.clip(np.asarray(activity, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if activity.size == 0:
            return activity
        if self.history is None:
            self.history = np.full(len(self.weights) - 1, activity[0])
        padded = np.concatenate([self.history, activity])
        smooth = np.convolve(padded, self.weights, mode="valid")
        self.history = padded[len(padded) - len(self.history):]
        return np.maximum(activity, smooth)


def close_mouth_in_silence(latent: MotionLatent, activity: np.ndarray | Tensor, fps: float = 25.0,
                           release_s: float = 0.08, gate: SilenceGate | None = None) -> MotionLatent:
    """``latent [T]`` with the mouth controls (``MOUTH``) scaled by voice activity ``[T]`` in [0, 1] (e.g.
    ``vasa3d.audio.vad.voice_activity``), so the mouth rests closed where no one speaks, whatever the noise.

    The gain is :class:`SilenceGate`'s (``fps``, ``release_s``); pass the same ``gate`` for consecutive
    windows of a stream (it remembers the activity before each window).
    """
    activity = np.asarray(activity, dtype=np.float64).reshape(-1)
    if len(activity) != len(latent):
        raise ValueError(f"close_mouth_in_silence: {len(activity)} activity frames for a latent of {len(latent)}; "
                         "compute the activity for the latent's frames")
    gain = (gate or SilenceGate(fps, release_s))(activity)
    dyn = latent.dyn.clone()
    dyn[..., MOUTH_CHANNELS] = dyn[..., MOUTH_CHANNELS] * torch.as_tensor(gain, dtype=dyn.dtype)[:, None]
    return MotionLatent(dyn, latent.pose, latent.gaze, latent.blink)
