"""Lip-sync on recorded human speech in several languages, end to end through the rendered video.

Test material: recorded words (or, for English, whole prompts) from Debian packages, separated by
pauses of ``--pause`` seconds (default 0.4-0.7 s, never under 0.3 s), with a -65 dBFS noise floor.
The same construction with espeak-ng speaking the numbers 1..N in each language gives the ceiling
(the phoneme-derived reference motion, ``vasa3d.audio.visemes.speech_motion``). Each motion is
rendered as a static-camera video of the avatar (``vasa3d.render.TalkingHead``), mediapipe re-detects
the face on every frame and the mouth opening (inner-lip gap / inter-ocular distance) is compared
with the audio. Columns:

- ``peak_corr`` / ``lag_frames``: the peak of the correlation of the mouth opening with the audio's
  RMS energy over lags of +-5 frames (``metrics.lipsync.av_offset_energy``) and its lag (positive:
  the mouth trails the audio);
- ``open_gap_std``: mean opening in speech minus in silence (speech/silence from silero-vad,
  probability 0.5), in standard deviations of the opening;
- ``face_rate``: frames where mediapipe finds the face;
- rows per recorded set: the diffusion model's raw output; the same with voice activity shutting the mouth
  where silero-vad hears no one (``MODEL_VAD_ROW``); with, before that, the energy baseline's jaw blended
  in (``Audio2Motion.energy_jaw``; ``VAD_ROW``: what ``vasa3d render`` does by default, offline and
  online); the energy→jaw baseline;
- ``phone_ref_corr`` / ``phone_ref_lag`` (recorded English only): correlation (peak within +-5
  frames) of the rendered opening with the opening of a reference motion built from the phones
  pocketsphinx recognises (``vasa3d.audio.phones.phone_motion``);
- in a second table, per language: ``lipsync_corr`` of the generated ``jaw_open`` against the
  phoneme-derived reference on the espeak material, for the diffusion model and both baselines
  (``audio.evaluation``, 3 seeds; latent level, no rendering).

Targets (issue 12): lag within +-1 frame, peak_corr >= 0.65, open_gap_std >= 1.3 on every
recorded language; held-out lipsync_corr >= 0.8 and above the energy baseline on every espeak language.

Data: ``bash scripts/get_real_speech.sh [DIR]`` (Debian packages, nothing fetched here). Keep it
out of training and tuning. Avatar: ``lightning fit --config experiments/fit_portrait.yaml``
(about 5 min on 2 CPU cores) or ``experiments/fit_subject.yaml``. Motion: ``--motion`` an
``Audio2Motion`` checkpoint (``lightning fit --config experiments/audio2motion.yaml``), default the
package's shipped model where one exists.

Run:  python benchmarks/real_speech.py --avatar outputs/fit_subject/astronaut \\
          [--motion CKPT] [--data DIR] [--languages en de fr es it ru] \\
          [--words 10] [--regression CKPT] [--latents-only] [--videos DIR]
Writes benchmarks/results/<date>-real_speech.{md,csv,json} and <date>-real_speech_heldout.{md,csv,json}.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
VAD_ROW = "diffusion + energy jaw + voice activity"  # the shipped pipeline's row
MODEL_VAD_ROW = "diffusion + voice activity"  # the model's own jaw (energy_jaw 0), gated
SHIPPED_COLUMN = "diffusion + energy jaw"
MAX_LAG = 5
NOISE_FLOOR_DBFS = -65.0
KTUBERLING = "ktuberling-data/usr/share/ktuberling/sounds"
ASTERISK_EN = "asterisk-core-sounds-en-wav/usr/share/asterisk/sounds/en_US_f_Allison"
ESPEAK_VOICES = {"en": "en-us", "de": "de", "fr": "fr", "es": "es", "it": "it", "ru": "ru", "nl": "nl", "sv": "sv",
                 "pt": "pt", "fi": "fi", "da": "da", "el": "el", "ca": "ca", "ro": "ro", "uk": "uk", "lt": "lt",
                 "sl": "sl", "ga": "ga"}
NUMBERS = {
    "en": "one two three four five six seven eight nine ten eleven twelve",
    "de": "eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf",
    "fr": "un deux trois quatre cinq six sept huit neuf dix onze douze",
    "es": "uno dos tres cuatro cinco seis siete ocho nueve diez once doce",
    "it": "uno due tre quattro cinque sei sette otto nove dieci undici dodici",
    "ru": "один два три четыре пять шесть семь восемь девять десять одиннадцать двенадцать",
    "nl": "een twee drie vier vijf zes zeven acht negen tien elf twaalf",
    "sv": "ett två tre fyra fem sex sju åtta nio tio elva tolv",
    "pt": "um dois três quatro cinco seis sete oito nove dez onze doze",
    "fi": "yksi kaksi kolme neljä viisi kuusi seitsemän kahdeksan yhdeksän kymmenen yksitoista kaksitoista",
    "da": "en to tre fire fem seks syv otte ni ti elleve tolv",
    "el": "ένα δύο τρία τέσσερα πέντε έξι επτά οκτώ εννέα δέκα έντεκα δώδεκα",
    "ca": "u dos tres quatre cinc sis set vuit nou deu onze dotze",
    "ro": "unu doi trei patru cinci șase șapte opt nouă zece unsprezece doisprezece",
    "uk": "один два три чотири п'ять шість сім вісім дев'ять десять одинадцять дванадцять",
    "lt": "vienas du trys keturi penki šeši septyni aštuoni devyni dešimt vienuolika dvylika",
    "sl": "ena dva tri štiri pet šest sedem osem devet deset enajst dvanajst",
    "ga": "a haon a dó a trí a ceathair a cúig a sé a seacht a hocht a naoi a deich",
}
DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "ru")


class BenchmarkError(RuntimeError):
    """An expected failure (missing data or checkpoint) reported as one line."""


@dataclass
class Material:
    """Test speech: mono ``waveform [N]`` at 16 kHz, the words' spans (s) and, for espeak, the phonemes and
    the 22.05 kHz clip they time."""

    name: str
    waveform: np.ndarray
    spans: list[tuple[float, float]]
    sources: list[str] = field(default_factory=list)
    clip: object | None = None  # SpeechClip (espeak only)

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / SAMPLE_RATE


# ------------------------------------------------------------------ material
def _trim(samples: np.ndarray, top_db: float = 35.0) -> np.ndarray:
    """``samples`` without the leading and trailing parts quieter than ``top_db`` below the peak."""
    import librosa

    if samples.size == 0:
        return samples
    return librosa.effects.trim(samples, top_db=top_db, frame_length=512, hop_length=128)[0]


def _pauses(count: int, pause: tuple[float, float], rng: np.random.Generator) -> list[float]:
    if pause[0] < 0.3 or pause[1] < pause[0]:
        raise ValueError(f"--pause {pause[0]} {pause[1]}: pauses must be at least 0.3 s and min <= max")
    return list(rng.uniform(pause[0], pause[1], count))


def _with_noise_floor(waveform: np.ndarray, seed: int) -> np.ndarray:
    floor = 10 ** (NOISE_FLOOR_DBFS / 20) * np.random.default_rng([seed, 3]).standard_normal(waveform.size)
    return (waveform + floor).astype(np.float32)


def recorded_material(name: str, files: list[Path], pause: tuple[float, float], seed: int = 0) -> Material:
    """Recordings ``files`` (any format ``load_audio`` reads), each trimmed of its silent ends, joined by pauses."""
    from vasa3d.audio.io import load_audio

    if not files:
        raise BenchmarkError(f"{name}: no recordings")
    rng = np.random.default_rng([seed, 1])
    gaps = _pauses(len(files) + 1, pause, rng)
    parts, spans, offset = [np.zeros(int(gaps[0] * SAMPLE_RATE), np.float32)], [], int(gaps[0] * SAMPLE_RATE)
    for path, gap in zip(files, gaps[1:]):
        samples = _trim(load_audio(path, sample_rate=SAMPLE_RATE)[0].astype(np.float32))
        if samples.size < SAMPLE_RATE // 20:
            continue
        spans.append((offset / SAMPLE_RATE, (offset + samples.size) / SAMPLE_RATE))
        silence = np.zeros(int(gap * SAMPLE_RATE), np.float32)
        parts += [samples, silence]
        offset += samples.size + silence.size
    return Material(name, _with_noise_floor(np.concatenate(parts), seed), spans, [str(f) for f in files])


def espeak_material(language: str, words: int, pause: tuple[float, float], seed: int = 0) -> Material:
    """espeak-ng speaking the numbers 1..``words`` in ``language``, one word at a time, joined by pauses;
    keeps the phoneme timings (pauses as ``_``) for the reference motion."""
    from vasa3d.audio.io import resample
    from vasa3d.audio.speech import Phoneme, SpeechClip, synthesize

    if language not in NUMBERS:
        raise BenchmarkError(f"espeak material: no number words for {language!r}; known: {' '.join(sorted(NUMBERS))}")
    texts = NUMBERS[language].split()
    texts = [texts[i % len(texts)] for i in range(words)]
    rng = np.random.default_rng([seed, 2])
    gaps = _pauses(len(texts) + 1, pause, rng)
    voice = ESPEAK_VOICES[language]
    rate = None
    parts, phonemes, spans, t = [], [], [], 0.0
    for i, text in enumerate(texts):
        clip = synthesize(text, voice=voice, seed=seed)
        rate = clip.sample_rate
        gap = np.zeros(int(gaps[i] * rate), np.float32)
        pause_start = t
        t += gap.size / rate
        lead = clip.phonemes[0].start_s if clip.phonemes else 0.0  # espeak's phonemes start a few ms in
        phonemes.append(Phoneme("_", pause_start, t + lead))
        sounding = [p for p in clip.phonemes if not p.symbol.startswith("_")]
        spans.append((t + sounding[0].start_s, t + sounding[-1].end_s))
        phonemes += [Phoneme(p.symbol, t + p.start_s, t + p.end_s) for p in clip.phonemes]
        parts += [gap, clip.waveform]
        t += clip.duration_s
    tail = np.zeros(int(gaps[-1] * rate), np.float32)
    phonemes.append(Phoneme("_", t, t + tail.size / rate))
    full = np.concatenate(parts + [tail])
    speech = SpeechClip(full, rate, phonemes, " ".join(texts), voice)
    waveform = _with_noise_floor(resample(full, rate, SAMPLE_RATE).astype(np.float32), seed)
    return Material(f"espeak {language}", waveform, spans, [f"espeak-ng {voice}: {' '.join(texts)}"], speech)


def recorded_sets(data: Path, languages: list[str], words: int, pause: tuple[float, float],
                  seed: int = 0, continuous_en: int = 6) -> dict[str, Material]:
    """``{"<lang> words": Material}`` from ktuberling's recorded words (first ``words`` in name order), plus
    ``"en prompts"``: ``continuous_en`` whole sentences of the Asterisk en-US prompts (continuous speech)."""
    out = {}
    for language in languages:
        folder = data / KTUBERLING / language
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".ogg", ".wav", ".flac", ".mp3"))
        if not files:
            there = " ".join(sorted(p.name for p in (data / KTUBERLING).glob("*") if p.is_dir())) or "none"
            raise BenchmarkError(f"{folder}: no recorded words for {language!r}; run `bash scripts/get_real_speech.sh "
                                 f"{data}` (languages there: {there})")
        out[f"{language} words"] = recorded_material(f"{language} words", files[:words], pause, seed)
    if continuous_en and "en" in languages:
        import soundfile as sf

        folder = data / ASTERISK_EN
        prompts = [p for p in sorted(folder.glob("*.wav")) if sf.info(str(p)).duration > 1.6]
        if not prompts:
            raise BenchmarkError(f"{folder}: no Asterisk prompts; run `bash scripts/get_real_speech.sh {data}`")
        out["en prompts"] = recorded_material("en prompts", prompts[:continuous_en], pause, seed)
    return out


def read_packages(data: Path) -> list[dict[str, str]]:
    """Rows of ``DIR/packages.tsv`` written by scripts/get_real_speech.sh (package, version, licence, recorded_by)."""
    path = data / "packages.tsv"
    if not path.is_file():
        raise BenchmarkError(f"{data}: no packages.tsv; prepare the data with `bash scripts/get_real_speech.sh {data}`")
    with path.open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# ------------------------------------------------------------------ figures
def sync_figures(opening: np.ndarray, waveform: np.ndarray, fps: float, activity: np.ndarray) -> dict[str, float]:
    """``peak_corr``, ``lag_frames``, ``open_gap_std`` and ``face_rate`` of a mouth-opening curve ``[T]``
    (NaN where no face was found) against 16 kHz ``waveform [N]`` and voice activity ``[T]``."""
    from vasa3d.metrics.lipsync import av_offset_energy

    opening = np.asarray(opening, dtype=np.float64)
    valid = np.isfinite(opening)
    out = {"face_rate": float(valid.mean()) if opening.size else float("nan")}
    speech, silence = valid & (activity >= 0.5), valid & (activity < 0.5)
    if valid.sum() < 3 or not speech.any() or not silence.any() or opening[valid].std() == 0:
        return {**out, "peak_corr": float("nan"), "lag_frames": float("nan"), "open_gap_std": float("nan")}
    offset = av_offset_energy(waveform, SAMPLE_RATE, opening, fps, max_offset=MAX_LAG)
    out["peak_corr"] = float(offset.extra.get("peak_corr", float("nan")))
    out["lag_frames"] = float(offset.value)
    out["open_gap_std"] = float((opening[speech].mean() - opening[silence].mean()) / opening[valid].std())
    return out


def reference_figures(opening: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """``phone_ref_corr`` (peak within +-MAX_LAG) and ``phone_ref_lag`` of ``opening [T]`` against ``reference [T]``."""
    from vasa3d.metrics.lipsync import mouth_opening_correlation

    result = mouth_opening_correlation(reference, opening, max_lag=MAX_LAG)
    return {"phone_ref_corr": float(result.extra["best_corr"]), "phone_ref_lag": float(result.extra["best_lag"])}


class FrameSink:
    """Collects rendered frames ``[H, W, 3]`` uint8 (and forwards them to an ``Mp4Writer`` if given)."""

    def __init__(self, writer=None) -> None:
        self.frames: list[np.ndarray] = []
        self.writer = writer

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(frame)
        if self.writer is not None:
            self.writer.write(frame)


def rendered_opening(head, latents, size: int, video: Path | None = None, waveform: np.ndarray | None = None,
                     chunk: int = 100) -> np.ndarray:
    """Render ``latents [T]`` (static camera), re-detect the face with mediapipe: opening ``[T]``, NaN = no face."""
    from vasa3d.metrics.landmarks import detect_landmarks, mouth_opening
    from vasa3d.render.video import Mp4Writer

    sink = FrameSink(Mp4Writer(video, head.fps) if video is not None else None)
    head.render_latents(latents, "static", size, sink)
    if sink.writer is not None:
        sink.writer.close(waveform, SAMPLE_RATE)
    openings = []
    for start in range(0, len(sink.frames), chunk):
        frames = torch.from_numpy(np.stack(sink.frames[start:start + chunk])).permute(0, 3, 1, 2).float() / 255
        openings.append(mouth_opening(detect_landmarks(frames, video=True)))
    return np.concatenate(openings)


# ------------------------------------------------------------------ run
def load_models(args):
    """(TalkingHead or None, Audio2Motion, regression Audio2Motion or None)."""
    from vasa3d.systems import Audio2Motion

    from vasa3d import runs
    from vasa3d.audio.pretrained import DEFAULT_MOTION_MODEL

    motion_path = args.motion
    if motion_path is None:  # the shipped model (scripts/build_motion_model.py), as `vasa3d render` uses it
        motion_path = DEFAULT_MOTION_MODEL
        if not motion_path.is_file():
            raise BenchmarkError(f"no motion model: give --motion CKPT (train one with `lightning fit --config "
                                 f"experiments/audio2motion.yaml`); no shipped model at {motion_path}")
    if args.avatar is not None and Path(args.avatar).is_dir():  # a run folder or run root: its newest last.ckpt
        args.avatar = runs.last_checkpoint(Path(args.avatar)) or args.avatar
    for label, path in (("--motion", motion_path), ("--avatar", args.avatar), ("--regression", args.regression)):
        if path is not None and not Path(path).is_file():
            raise BenchmarkError(f"{label} {path}: no such checkpoint")
    print(f"motion model: {motion_path}", flush=True)
    head = None
    if args.avatar is not None:
        from vasa3d.render.talking import TalkingHead

        head = TalkingHead.from_checkpoints(args.avatar, motion_path)
        motion = head.motion
    else:
        motion = Audio2Motion.load_from_checkpoint(motion_path, map_location="cpu").eval()
    regression = None
    if args.regression is not None:
        regression = Audio2Motion.load_from_checkpoint(args.regression, map_location="cpu").eval()
    return head, motion, regression, motion_path


def evaluate(args) -> tuple[dict, dict, dict]:
    """End-to-end rows ``{name: {metric: value or MetricResult}}``, held-out espeak rows ``{language: {model:
    lipsync_corr}}`` and run information."""
    from vasa3d.audio.evaluation import evaluate_generator
    from vasa3d.audio.phones import phone_motion, recognize_phones
    from vasa3d.audio.vad import voice_activity
    from vasa3d.audio.visemes import mouth_opening as latent_opening
    from vasa3d.audio.visemes import speech_motion
    from vasa3d.metrics import MetricResult

    packages = read_packages(args.data)
    head, motion, regression, motion_path = load_models(args)
    extractor = motion.feature_extractor()
    if extractor.sample_rate != SAMPLE_RATE:
        raise BenchmarkError(f"the motion model reads {extractor.sample_rate} Hz audio; this benchmark builds "
                             f"{SAMPLE_RATE} Hz material")
    fps, dim = float(motion.hparams.fps), int(motion.hparams.latent_dim)
    size = args.size or (head.native_size if head is not None else 0)
    seeds = tuple(range(args.seeds))
    pause = tuple(args.pause)
    recorded = recorded_sets(args.data, args.languages, args.words, pause, args.seed,
                             args.continuous_en if not args.no_continuous else 0)
    generators = {"diffusion": lambda a, s: motion.generate(a, seed=s, energy_jaw=0.0),
                  SHIPPED_COLUMN: lambda a, s: motion.generate(a, seed=s),
                  "energy→jaw baseline": lambda a, s: motion.energy.generate(a, seed=s)}
    if regression is not None:
        generators["regression baseline"] = lambda a, s: regression.generate(a, seed=s, energy_jaw=0.0)
    rows: dict[str, dict] = {}

    def figures(latents, material: Material, label: str) -> dict:
        frames = len(latents)
        activity = voice_activity(material.waveform, SAMPLE_RATE, fps, frames)
        lat = latent_opening(latents).numpy()
        out = {}
        if head is not None:
            video = args.videos / (re.sub(r"[^A-Za-z0-9]+", "_", label.replace("→", " to ")).strip("_") + ".mp4") \
                if args.videos else None
            opening = rendered_opening(head, latents, size, video, material.waveform)
            out.update(sync_figures(opening, material.waveform, fps, activity))
        else:
            opening = lat
            figures_ = sync_figures(lat, material.waveform, fps, activity)
            out.update({k: v for k, v in figures_.items() if k != "face_rate"})
            out["face_rate"] = MetricResult.not_measured("--latents-only: nothing rendered")
        if head is not None:  # the same figures before rendering
            latent = sync_figures(lat, material.waveform, fps, activity)
            out["latent_peak_corr"], out["latent_open_gap_std"] = latent["peak_corr"], latent["open_gap_std"]
        return out, opening

    def features(material: Material):
        return extractor(material.waveform).float()

    english_only = MetricResult.not_measured("English recordings only (pocketsphinx's phones are US-English)")

    def run_recorded(set_name: str) -> None:
        material = recorded[set_name]
        feats = features(material)
        reference = None
        if set_name.startswith("en "):
            phones = recognize_phones(material.waveform, SAMPLE_RATE)
            reference = latent_opening(phone_motion(material.waveform, SAMPLE_RATE, fps, len(feats), phones=phones,
                                                    dim=dim)).numpy()
        for model_name in ("diffusion", MODEL_VAD_ROW, VAD_ROW, "energy→jaw baseline"):
            start = time.perf_counter()
            with torch.no_grad():
                if model_name in (VAD_ROW, MODEL_VAD_ROW):  # VAD_ROW: what `vasa3d render` does
                    activity = voice_activity(material.waveform, SAMPLE_RATE, fps, len(feats))
                    latents = motion.generate(feats, seed=args.seed, voice_activity=activity,
                                              energy_jaw=0.0 if model_name == MODEL_VAD_ROW else None)
                else:
                    latents = generators[model_name](feats, args.seed)
            label = f"{set_name} (recorded) · {model_name}"
            row, opening = figures(latents, material, label)
            if reference is not None:
                row.update(reference_figures(opening, reference))
            else:
                row.update({"phone_ref_corr": english_only, "phone_ref_lag": english_only})
            rows[label] = row
            print(f"{label}: " + ", ".join(f"{k} {_show(v)}" for k, v in row.items())
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)

    heldout: dict[str, dict] = {}
    for language in args.languages:
        run_recorded(f"{language} words")
        material = espeak_material(language, args.words, pause, args.seed)
        feats = features(material)
        reference = speech_motion(material.clip, fps=fps, dim=dim, seed=args.seed, num_frames=len(feats))
        label = f"{language} espeak words · phoneme reference (ceiling)"
        rows[label], _ = figures(reference, material, label)
        rows[label].update({"phone_ref_corr": english_only, "phone_ref_lag": english_only})
        print(f"{label}: " + ", ".join(f"{k} {_show(v)}" for k, v in rows[label].items()), flush=True)
        utterance = [{"audio": feats, "latent": reference}]
        heldout[language] = {}
        for model_name, generate in generators.items():
            with torch.no_grad():
                heldout[language][model_name] = evaluate_generator(generate, utterance, seeds)["lipsync_corr"]
        if regression is None:
            heldout[language]["regression baseline"] = MetricResult.not_measured("no --regression checkpoint given")
        print(f"{language} espeak held-out lipsync_corr: " + ", ".join(
            f"{k} {_show(v)}" for k, v in heldout[language].items()), flush=True)
    for set_name in recorded:
        if not set_name.endswith(" words"):
            run_recorded(set_name)

    info = {"packages": packages, "motion": str(motion_path), "avatar": str(args.avatar) if args.avatar else None,
            "size": size, "fps": fps,
            "material": {name: {"duration_s": round(m.duration_s, 2), "words": len(m.spans),
                                "sources": [os.path.relpath(s, args.data) if s.startswith(str(args.data)) else s
                                            for s in m.sources]}
                         for name, m in recorded.items()}}
    return rows, heldout, info


def _show(value) -> str:
    from vasa3d.metrics import MetricResult

    if isinstance(value, MetricResult):
        return value.format()
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("VASA3D_REAL_SPEECH", Path.home() / ".cache/vasa3d/real_speech")),
                        help="folder prepared by scripts/get_real_speech.sh (default: $VASA3D_REAL_SPEECH or "
                             "~/.cache/vasa3d/real_speech)")
    parser.add_argument("--avatar", type=Path, help="SubjectFitting checkpoint to render (needed unless --latents-only)")
    parser.add_argument("--motion", type=Path, help="Audio2Motion checkpoint (default: the shipped model, if any)")
    parser.add_argument("--regression", type=Path, help="Audio2Motion regression-baseline checkpoint (optional)")
    parser.add_argument("--languages", nargs="+", default=list(DEFAULT_LANGUAGES), choices=sorted(NUMBERS))
    parser.add_argument("--words", type=int, default=10, help="recorded words per language (and espeak numbers)")
    parser.add_argument("--continuous-en", type=int, default=6, help="Asterisk en-US sentences for continuous English")
    parser.add_argument("--no-continuous", action="store_true", help="skip the continuous English prompts")
    parser.add_argument("--pause", type=float, nargs=2, default=(0.4, 0.7), metavar=("MIN_S", "MAX_S"),
                        help="pause between words, seconds (at least 0.3)")
    parser.add_argument("--size", type=int, help="render size in px (default: the avatar's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the espeak held-out correlation")
    parser.add_argument("--seed", type=int, default=0, help="motion seed of the rendered runs and material pauses")
    parser.add_argument("--latents-only", action="store_true", help="no avatar: measure the latent mouth opening")
    parser.add_argument("--videos", type=Path, help="also write each rendered video (mp4 with audio) here")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", default="", help="a suffix for the result files, so that a second run on the same "
                        "day does not replace the first")
    args = parser.parse_args(argv)
    if args.avatar is None and not args.latents_only:
        parser.error("give --avatar CKPT (make one with `lightning fit --config experiments/fit_portrait.yaml`, "
                     "about 5 min on 2 CPU cores), or --latents-only")
    if args.words < 2:
        parser.error(f"--words {args.words}: use at least 2")
    if min(args.pause) < 0.3:
        parser.error(f"--pause {args.pause[0]} {args.pause[1]}: pauses must be at least 0.3 s")
    try:
        rows, heldout, info = evaluate(args)
    except BenchmarkError as error:
        print(f"real_speech: {error}", file=sys.stderr)
        return 2

    from vasa3d.metrics.table import write_table

    rendering = (f"rendered mouth opening (static camera, {info['size']} px, mediapipe re-detection)" if args.avatar
                 else "latent mouth opening (--latents-only)")
    packages = "; ".join(f"{p['package']} {p['version']} ({p['licence']}, {p['recorded_by']})"
                         for p in info["packages"])
    notes = (
        f"Recorded speech (evaluation only, never trained or tuned on): {packages}. Material: recorded words "
        f"(ktuberling, first {args.words} per language in file-name order) or, for 'en prompts', whole Asterisk "
        f"en-US sentences (8 kHz, continuous speech), each trimmed of silent ends and joined by pauses of "
        f"{args.pause[0]}-{args.pause[1]} s, -65 dBFS noise floor; 'espeak words' rows: espeak-ng speaks the numbers "
        f"1..{args.words} the same way, driven by the phoneme-derived reference motion (the ceiling). {rendering}; "
        f"motion {info['motion']}; avatar {info['avatar']}. peak_corr/lag_frames: opening vs RMS energy over "
        f"+-{MAX_LAG} frames (lag > 0: mouth trails audio); open_gap_std: speech minus silence (silero-vad) in std "
        "of the opening; face_rate: frames with a face; latent_*: the same figures on the latent before rendering; "
        "phone_ref_*: correlation (peak over lags) with the reference motion built from pocketsphinx's phones. "
        "Targets: |lag| <= 1, peak_corr >= 0.65, open_gap_std >= 1.3 on every recorded language."
    )
    command = "python " + shlex.join(["benchmarks/real_speech.py", *(sys.argv[1:] if argv is None else argv)])
    directions = {"peak_corr": 1, "open_gap_std": 1, "face_rate": 1, "phone_ref_corr": 1, "latent_peak_corr": 1,
                  "latent_open_gap_std": 1, "lag_frames": 0, "phone_ref_lag": 0}
    suffix = f"-{args.name}" if args.name else ""
    paths = write_table(rows, "real_speech" + suffix, out_dir=args.out_dir, reference=None, command=command, notes=notes,
                        config_text=json_dumps(info), directions=directions)
    heldout_notes = (
        f"Held-out espeak-ng speech per language: the numbers 1..{args.words} as words with pauses (never in "
        f"training). lipsync_corr of the generated jaw_open against the phoneme-derived reference motion, mean over "
        f"{args.seeds} seeds (vasa3d.audio.evaluation; latent level). Motion {info['motion']}. Target: >= 0.8 and "
        "above the energy->jaw baseline in every trained language."
    )
    heldout_paths = write_table({language: {f"{model} lipsync_corr": value for model, value in row.items()}
                                 for language, row in heldout.items()},
                                "real_speech_heldout" + suffix, out_dir=args.out_dir, reference=None, command=command,
                                notes=heldout_notes, config_text=json_dumps(info),
                                directions={f"{m} lipsync_corr": 1 for row in heldout.values() for m in row})
    print(paths["md"].read_text())
    print(heldout_paths["md"].read_text())
    print("wrote", ", ".join(str(p) for p in [*paths.values(), *heldout_paths.values()]))
    return 0


def json_dumps(value) -> str:
    import json

    return json.dumps(value, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    raise SystemExit(main())
