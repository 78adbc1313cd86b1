"""Audio-motion pairs for ``Audio2Motion``: synthetic speech (espeak-ng + visemes) and real video pairs.

Synthetic utterances draw a language (``languages``: the shipped corpora of ``vasa3d.audio.corpora``, in
turn), a sentence (train, val and test use disjoint sentences in every language), a voice of that
language with a variant, a rate and a pitch from the seed; espeak-ng speaks it, ``speech_motion`` turns
its phoneme timings into a ``MotionLatent``, ``AudioFeatureExtractor`` gives the frame-aligned features.
Training utterances also come as ``augment_copies`` augmented recordings (``vasa3d.audio.augment``:
rooms, noise, babble, telephone, levels, voices; the motion target stays the clean one). The manifest
counts every phoneme espeak-ng emitted and those without a viseme (``phonemes.unmapped_count``, kept 0).
Utterances are cached under ``cache_dir/<hash of the settings>/`` (one ``.npz`` per utterance and copy,
plus ``manifest.json``). espeak-ng keeps a process-wide state between calls (see
``vasa3d.audio.speech.synthesize``), so synthesis runs in fresh worker processes, each on a fixed block of
utterances: the data depend on the settings only.

``video_folder`` adds real pairs to the training split: ``name.wav`` (or any audio) + ``name.npz``
(``MotionLatent.save``, at ``fps``), and ``name.mp4`` videos whose audio track gives the features and
whose frames give the latents through ``LandmarkMotionEncoder`` (the first frame is the neutral reference).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vasa3d.audio.features import AudioFeatureExtractor
from vasa3d.audio.visemes import mouth_opening
from vasa3d.cache import source_hash

CACHE_VERSION = 2
# The code that makes the cached utterances: its source is part of the cache key.
SOURCES = ("datamodules.speech_motion", "vasa3d.audio.speech", "vasa3d.audio.visemes", "vasa3d.audio.features",
           "vasa3d.audio.augment", "vasa3d.audio.corpora", "vasa3d.audio.io", "vasa3d.motion")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.", "Please pass me the butter and the bread.",
    "We were away a year ago.", "My mother made a marvellous meal for everybody.",
    "Five fluffy feathers floated over the valley.", "Would you like a cup of warm tea?",
    "She sells sea shells by the sea shore.", "Peter picked a peck of pickled peppers.",
    "The rain in Spain stays mainly in the plain.", "I think this is the best idea we have had all week.",
    "Open the window, it is far too hot in here.", "Who owns the blue boat moored at the pier?",
    "Bring me the big map from the back room.", "Each evening we walk along the river.",
    "Can you believe how much the city has changed?", "Good morning, and welcome to the show.",
    "Nobody knew where the old road was going.", "Music moves people in mysterious ways.",
    "Let us meet again at noon tomorrow.", "The children laughed and played in the park.",
    "Honestly, I have no idea what you mean.", "Why would anyone leave so early?",
    "Our boat floated slowly toward the moon.", "A quiet voice whispered through the wall.",
    "The museum opens at nine on weekdays.", "Keep calm and carry on with your work.",
    "Wow, that was a wonderful performance!", "Beautiful flowers bloom every spring.",
    "Remember to buy milk, eggs and apples.", "The phone rang twice before anyone answered.",
    "Every journey begins with a single step.", "Please speak a bit more slowly.",
    "Thank you very much for your patience.", "The weather will be cool and windy today.",
    "I would rather stay home and read a book.", "Mountains rise above the misty forest.",
    "Do you know the way to the station?", "Fresh fish is sold at the market every Friday.",
    "We need to finish the report by Monday.", "Hope is a thing with feathers that perches in the soul.",
    "He moved the heavy box with both hands.", "Zebras and giraffes wandered across the plain.",
)


def _run_workers(jobs: list[list[tuple[str, dict]]], settings: dict, root: Path) -> None:
    """Synthesise each job (a list of (file name, spec)) in its own fresh Python process, in parallel."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    code = "import sys; from datamodules.speech_motion import _worker_main; _worker_main(sys.argv[1])"
    processes = []
    for k, job in enumerate(jobs):
        request = root / f".job_{k}.json"
        request.write_text(json.dumps({"job": job, "settings": settings, "root": str(root)}))
        processes.append((subprocess.Popen([sys.executable, "-c", code, str(request)], env=env,
                                           stderr=subprocess.PIPE, text=True), request))
    failures = []
    for process, request in processes:
        _, err = process.communicate()
        request.unlink(missing_ok=True)
        if process.returncode != 0:
            failures.append(err.strip().splitlines()[-1] if err.strip() else f"exit code {process.returncode}")
    if failures:
        raise RuntimeError(f"SpeechMotionDataModule: speech synthesis failed in a worker process: {failures[0]}")


def _worker_main(request_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    root = Path(request["root"])
    names, specs = zip(*request["job"]) if request["job"] else ((), ())
    for name, copies in zip(names, _synthesise_block(list(specs), request["settings"])):
        for k, data in enumerate(copies):
            applied = data.pop("applied", {})
            target = root / (name if k == 0 else name.replace(".npz", f"_aug{k}.npz"))
            np.savez(target, applied=json.dumps(applied), **data)


def _synthesise_block(specs: list[dict], settings: dict) -> list[list[dict]]:
    """Synthesise ``specs`` (in order) into arrays: per spec, the clean utterance then its augmented copies
    (``spec["copies"]`` of them); run in a fresh process for reproducible audio."""
    from vasa3d.audio.augment import AudioAugment
    from vasa3d.audio.io import resample
    from vasa3d.audio.speech import synthesize
    from vasa3d.audio.visemes import speech_motion

    torch.set_num_threads(1)
    extractor = AudioFeatureExtractor(**settings["feature"])
    augment = AudioAugment.from_config(settings.get("augment"))
    clean = []
    for spec in specs:
        clip = synthesize(spec["text"], spec["voice"], spec["rate"], spec["pitch"], spec["pitch_range"], spec["seed"])
        min_samples = int(math.ceil(settings["min_duration_s"] * clip.sample_rate))
        if len(clip.waveform) < min_samples:  # trailing silence, so every utterance holds one window
            clip.waveform = np.concatenate([clip.waveform, np.zeros(min_samples - len(clip.waveform), np.float32)])
        clean.append((clip, resample(clip.waveform, clip.sample_rate, extractor.sample_rate)))
    babble_sources = [w for (_, w), spec in zip(clean, specs) if spec.get("copies", 0) > 0]
    out = []
    for spec, (clip, waveform) in zip(specs, clean):
        features = extractor(waveform).numpy()
        latent = speech_motion(clip, extractor.fps, settings["latent_dim"], seed=spec["seed"],
                               num_frames=len(features))
        motion = {"dyn": latent.dyn.numpy(), "pose": latent.pose.numpy(), "gaze": latent.gaze.numpy(),
                  "phonemes": json.dumps([(p.symbol, p.start_s, p.end_s) for p in clip.phonemes])}
        copies = [{"audio": features, **motion, "waveform": _pcm16(waveform)}]
        others = [w for w in babble_sources if w is not waveform]
        for k in range(1, spec.get("copies", 0) + 1 if augment is not None else 1):
            rng = np.random.default_rng([spec["seed"], k, 11])
            noisy, applied = augment(waveform, extractor.sample_rate, rng, others)
            audio = extractor(noisy).numpy()[:len(features)]
            copies.append({"audio": audio, **motion, "waveform": _pcm16(noisy), "applied": applied})
        out.append(copies)
    return out


def word_list(sentence: str) -> str:
    """``sentence`` as a list of its words, each its own sentence: "Word. Word. Word." (one word, or a
    language written without spaces: the sentence as it is)."""
    words = [w.strip(".,!?;:¡¿\"'«»()…،؟。、！？") for w in sentence.split()]
    words = [w for w in words if w]
    return ". ".join(words) + "." if len(words) > 1 else sentence


def _pcm16(waveform: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(waveform) * 32767).clip(-32768, 32767).astype(np.int16)


def _resample_time(values: np.ndarray, source_fps: float, target_fps: float, frames: int) -> np.ndarray:
    """``values [T, C]`` at ``source_fps`` -> ``[frames, C]`` at ``target_fps`` (linear, frame centres)."""
    source_t = (np.arange(len(values)) + 0.5) / source_fps
    target_t = (np.arange(frames) + 0.5) / target_fps
    return np.stack([np.interp(target_t, source_t, values[:, c]) for c in range(values.shape[1])], axis=1)


def _video_latents(path: Path, dim: int) -> tuple[dict[str, np.ndarray], float]:
    """Latents of a video's frames by ``LandmarkMotionEncoder`` (first frame = neutral reference): (arrays, fps)."""
    import imageio.v3 as iio

    from vasa3d.face.analysis import analyze_portrait
    from vasa3d.motion.encoder import LandmarkMotionEncoder
    from vasa3d.teachers.evaluation import detect_landmarks

    fps = float(iio.immeta(path).get("fps") or 25.0)
    frames = np.stack([np.asarray(f)[..., :3] for f in iio.imiter(path)])
    reference = analyze_portrait(frames[0], crop_size=128, min_face_px=32)
    found = detect_landmarks(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0).numpy()  # image px
    valid = ~np.isnan(found).any(axis=(1, 2))
    if not valid.any():
        raise ValueError(f"{path.name}: no face found in any frame; use a video that shows one face")
    nearest = np.flatnonzero(valid)[np.abs(np.arange(len(found))[:, None] - np.flatnonzero(valid)).argmin(axis=1)]
    found = found[nearest]  # frames without a face take their nearest detected neighbour
    affine = reference.crop_affine.astype(np.float64)
    crop = found.astype(np.float64).copy()
    crop[..., :2] = found[..., :2] @ affine[:, :2].T + affine[:, 2]
    crop[..., 2] *= math.sqrt(abs(np.linalg.det(affine[:, :2])))
    latent = LandmarkMotionEncoder(reference.landmarks, reference.K, dim=dim).encode(crop)
    return {"dyn": latent.dyn.numpy(), "pose": latent.pose.numpy(), "gaze": latent.gaze.numpy()}, fps


def load_video_pairs(folder: str | Path, extractor: AudioFeatureExtractor, dim: int) -> list[dict]:
    """Real pairs from ``folder``: ``name.npz`` (``MotionLatent.save``, at ``extractor.fps``) + ``name.<audio>``,
    and ``name.mp4`` (audio track + frames through the motion encoder). Features and latents are cut to
    the shorter of the two."""
    from vasa3d.audio.io import load_audio
    from vasa3d.motion.latent import MotionLatent

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such video folder; set video_folder to a folder of name.wav + "
                                "name.npz pairs or name.mp4 videos")
    out = []
    for path in sorted(folder.iterdir()):
        audio_files = [path.with_suffix(s) for s in AUDIO_SUFFIXES if path.with_suffix(s).is_file()]
        if path.suffix == ".npz" and audio_files:
            latent = MotionLatent.load(path)
            arrays = {"dyn": latent.dyn.numpy(), "pose": latent.pose.numpy(),
                      "gaze": (latent.gaze if latent.gaze is not None else torch.zeros(len(latent), 2)).numpy()}
            source = audio_files[0]
        elif path.suffix.lower() == ".mp4" and not path.with_suffix(".npz").is_file():
            arrays, video_fps = _video_latents(path, dim)
            if abs(video_fps - extractor.fps) > 1e-3:
                count = int(round(len(arrays["dyn"]) * extractor.fps / video_fps))
                arrays = {k: _resample_time(v, video_fps, extractor.fps, count).astype(np.float32)
                          for k, v in arrays.items()}
            source = path
        else:
            continue
        if arrays["dyn"].shape[1] != dim:
            raise ValueError(f"{path.name}: latent dim {arrays['dyn'].shape[1]} but latent_dim={dim}; "
                             "re-encode the latents or change latent_dim")
        waveform, _ = load_audio(source, extractor.sample_rate)
        features = extractor(waveform).numpy()
        frames = min(len(features), len(arrays["dyn"]))
        out.append({"audio": features[:frames], **{k: np.asarray(v[:frames], np.float32) for k, v in arrays.items()},
                    "waveform": np.round(waveform * 32767).clip(-32768, 32767).astype(np.int16),
                    "text": "", "voice": path.stem, "phonemes": "[]"})
    return out


def _phoneme_census(root: Path, entries: list[dict]) -> dict:
    """Every phoneme mnemonic espeak-ng emitted (count, and in which languages) and those without a viseme."""
    from vasa3d.audio.visemes import unmapped_phonemes

    counts: dict[str, int] = {}
    languages: dict[str, set] = {}
    for entry in entries:
        with np.load(root / entry["file"]) as data:
            for symbol, _, _ in json.loads(str(data["phonemes"])):
                counts[symbol] = counts.get(symbol, 0) + 1
                languages.setdefault(symbol, set()).add(entry.get("language", "en"))
    unmapped = unmapped_phonemes(counts)
    return {"distinct": len(counts), "unmapped_count": sum(counts[s] for s in unmapped), "unmapped": unmapped,
            "counts": dict(sorted(counts.items())),
            "languages": {symbol: sorted(langs) for symbol, langs in sorted(languages.items())}}


class _Windows(Dataset):
    """Fixed-length windows of utterances (see :class:`SpeechMotionDataModule` for the item contract)."""

    def __init__(self, utterances: list[dict], window: int, prev: int, stride: int) -> None:
        self.utterances, self.window, self.prev = utterances, window, prev
        self.index = []
        for u, utt in enumerate(utterances):
            length = len(utt["audio"])
            starts = list(range(0, length - window + 1, stride))
            if starts and starts[-1] != length - window:
                starts.append(length - window)
            # a window starts at 0 (no history) or has its full P frames of history
            self.index += [(u, s) for s in dict.fromkeys(0 if s < prev else s for s in starts)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        u, start = self.index[i]
        utt = self.utterances[u]
        span = slice(start, start + self.window)
        item = {name: torch.from_numpy(np.asarray(utt[name][span], np.float32)) for name in ("audio", "dyn", "pose", "gaze")}
        has_prev = start >= self.prev and self.prev > 0
        for name in ("dyn", "pose", "gaze"):
            history = utt[name][start - self.prev: start] if has_prev else np.zeros((self.prev, utt[name].shape[1]))
            item["prev_" + name] = torch.from_numpy(np.asarray(history, np.float32))
        item["has_prev"] = torch.tensor(has_prev)
        item["mouth"] = mouth_opening(item["dyn"])
        item["utterance"] = torch.tensor(u, dtype=torch.long)
        return item


class SpeechMotionDataModule(L.LightningDataModule):
    """Windows of (audio features, motion latent) pairs, with held-out sentences for val and test.

    Batches (B windows of T frames, P frames of history, D = ``latent_dim``, F = ``feature_dim``):
    ``audio [B, T, F]`` float32, ``dyn [B, T, D]``, ``pose [B, T, 6]``, ``gaze [B, T, 2]``, ``prev_dyn
    [B, P, D]``, ``prev_pose [B, P, 6]``, ``prev_gaze [B, P, 2]`` (the P frames before the window; zeros
    where ``has_prev [B]`` bool is False, i.e. the window starts at frame 0), ``mouth [B, T]`` (the
    reference's ``mouth_opening``) and ``utterance [B]`` long (index within the split).

    Args:
        num_utterances: synthetic utterances in all (split between train, val and test by the fractions).
        window_frames: T, frames per training window.
        prev_frames: P, frames of motion history given with each window.
        fps: video frame rate of features and latents.
        latent_dim: D of ``MotionLatent.dyn`` (>= 12).
        n_mels: log-mel bands of the audio features.
        pitch: add log-f0 and voicing to the audio features.
        sample_rate: audio sample rate for the features, Hz.
        voices: espeak-ng voices to draw from when ``languages`` is None (language codes, ``+variant`` allowed).
        languages: corpus languages to speak, in turn (keys of ``vasa3d.audio.corpora.LANGUAGE_VOICES``, each
            with its own voices); None = the built-in English sentences with ``voices``.
        variants: espeak-ng voice variants drawn for every voice ("" = the voice as it is; see
            ``vasa3d.audio.corpora.VOICE_VARIANTS``).
        rate_range: speaking rate range, words per minute.
        pitch_range: espeak pitch range (0-100).
        sentences_file: optional text file, one sentence a line, used in addition to the built-in ones.
        val_fraction: fraction of sentences (and utterances) held out for validation.
        test_fraction: fraction of sentences (and utterances) held out for testing.
        window_stride: frames between consecutive training windows.
        batch_size: windows per batch.
        num_workers: DataLoader workers.
        cache_dir: where synthesised pairs are cached.
        seed: drives every random choice.
        video_folder: optional folder of real pairs (``name.wav`` + ``name.npz``, or ``name.mp4``), training only.
        synthesis_workers: processes that synthesise in parallel, each a fixed block (babble is drawn from the
            block's utterances, so the number is part of the cache key).
        augment: ``vasa3d.audio.augment.AudioAugment`` arguments, one probability per augmentation
            (``p_reverb``, ``p_noise``, ``p_babble``, ``p_telephone``, ``p_resample_8k``, ``p_gain``,
            ``p_mic_tilt``, ``p_pitch_shift``, ``p_vtlp``) and their ranges; None = no augmentation.
        augment_copies: augmented copies of each training utterance, besides the clean one.
        word_lists: fraction of the training utterances spoken as a list of their sentence's words, each
            its own sentence ("Word. Word. Word."), so that the model also hears words apart, with the
            pauses and falling pitch of a word list (recorded words, dictation); languages written without
            spaces keep their sentence. 0 = sentences only.
    """

    def __init__(
        self,
        num_utterances: int = 120,
        window_frames: int = 50,
        prev_frames: int = 10,
        fps: float = 25.0,
        latent_dim: int = 16,
        n_mels: int = 40,
        pitch: bool = True,
        sample_rate: int = 16000,
        voices: tuple[str, ...] = ("en-us", "en-gb", "en-us+f3", "en-gb-x-rp+m3", "en-029+f2"),
        rate_range: tuple[int, int] = (140, 210),
        pitch_range: tuple[int, int] = (30, 70),
        sentences_file: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        window_stride: int = 10,
        batch_size: int = 16,
        num_workers: int = 0,
        cache_dir: str = ".cache/speech_motion",
        seed: int = 0,
        video_folder: str | None = None,
        synthesis_workers: int = 2,
        languages: tuple[str, ...] | None = None,
        variants: tuple[str, ...] = ("",),
        augment: dict[str, Any] | None = None,
        augment_copies: int = 0,
        word_lists: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= word_lists <= 1.0:
            raise ValueError(f"SpeechMotionDataModule: word_lists={word_lists} must be a fraction in [0, 1]")
        if augment_copies < 0 or (augment_copies > 0 and not augment):
            raise ValueError(f"SpeechMotionDataModule: augment_copies={augment_copies} needs augment settings "
                             "(e.g. {p_reverb: 0.5, p_noise: 0.5}) and must be >= 0")
        from vasa3d.audio.augment import AudioAugment

        AudioAugment.from_config(augment)  # unknown keys fail here, not in a worker process
        self.feature = AudioFeatureExtractor(sample_rate, fps, n_mels, pitch)
        self.synthesised = 0  # utterances synthesised by the last setup (0 when the cache served them)
        self.splits: dict[str, list[dict]] = {}

    @property
    def feature_dim(self) -> int:
        """F, the audio feature channels."""
        return self.feature.dim

    # ------------------------------------------------------------ what to make
    def sentences(self, language: str | None = None) -> list[str]:
        """The sentences of ``language`` (None: the built-in English ones plus ``sentences_file``)."""
        if language is not None:
            from vasa3d.audio.corpora import sentences

            return sentences(language)
        out = list(DEFAULT_SENTENCES)
        if self.hparams.sentences_file:
            lines = Path(self.hparams.sentences_file).read_text(encoding="utf-8").splitlines()
            out += [line.strip() for line in lines if line.strip()]
        return out

    def _languages(self) -> list[str | None]:
        return list(self.hparams.languages) if self.hparams.languages else [None]

    def sentence_splits(self, language: str | None = None) -> dict[str, list[str]]:
        """Disjoint sentence lists for train, val and test (of one language; None = the English default)."""
        sentences = self.sentences(language)
        order = np.random.default_rng([self.hparams.seed, 1]).permutation(len(sentences))
        n_val = max(1, round(self.hparams.val_fraction * len(sentences)))
        n_test = max(1, round(self.hparams.test_fraction * len(sentences)))
        if n_val + n_test >= len(sentences):
            raise ValueError(f"SpeechMotionDataModule: {len(sentences)} sentences cannot give {n_val} val and {n_test} "
                             "test sentences and leave some for training; add sentences or lower the fractions")
        pick = lambda idx: [sentences[i] for i in sorted(idx)]  # noqa: E731
        return {"val": pick(order[:n_val]), "test": pick(order[n_val:n_val + n_test]),
                "train": pick(order[n_val + n_test:])}

    def _voices(self, language: str | None) -> list[str]:
        if language is None:
            return list(self.hparams.voices)
        from vasa3d.audio.corpora import voices

        return list(voices(language))

    def utterance_specs(self) -> dict[str, list[dict]]:
        hp = self.hparams
        rng = np.random.default_rng([hp.seed, 2])
        n_val = max(1, round(hp.val_fraction * hp.num_utterances))
        n_test = max(1, round(hp.test_fraction * hp.num_utterances))
        counts = {"train": max(1, hp.num_utterances - n_val - n_test), "val": n_val, "test": n_test}
        languages = self._languages()
        splits = {lang: self.sentence_splits(lang) for lang in languages}
        variants = list(hp.variants) or [""]
        word_rng = np.random.default_rng([hp.seed, 3])  # its own stream: the other draws do not move
        specs: dict[str, list[dict]] = {}
        for split in ("val", "test", "train"):
            per_language = {lang: list(rng.permutation(len(splits[lang][split]))) for lang in languages}
            items = []
            for i in range(counts[split]):
                lang = languages[i % len(languages)]  # languages in turn: balanced
                order = per_language[lang]
                sentence = splits[lang][split][order[(i // len(languages)) % len(order)]]
                if split == "train" and hp.word_lists > 0 and word_rng.random() < hp.word_lists:
                    sentence = word_list(sentence)
                voice = str(rng.choice(self._voices(lang)))
                variant = str(rng.choice(variants))
                items.append({"text": sentence, "language": lang or "en",
                              "voice": voice + ("+" + variant if variant else ""),
                              "rate": int(rng.integers(hp.rate_range[0], hp.rate_range[1] + 1)),
                              "pitch": int(rng.integers(hp.pitch_range[0], hp.pitch_range[1] + 1)),
                              "pitch_range": int(rng.integers(30, 80)), "seed": int(rng.integers(2**31)),
                              "copies": hp.augment_copies if split == "train" else 0})
            specs[split] = items
        return {"train": specs["train"], "val": specs["val"], "test": specs["test"]}

    def _settings(self) -> dict:
        return {"feature": self.feature.config(), "latent_dim": self.hparams.latent_dim,
                "min_duration_s": (self.hparams.window_frames + self.hparams.prev_frames + 1) / self.hparams.fps,
                "augment": dict(self.hparams.augment) if self.hparams.augment else None,
                "synthesis_workers": self.hparams.synthesis_workers}

    def cache_key(self) -> str:
        """Hash of the settings, the utterance list and the source of the code that makes the data (:data:`SOURCES`)."""
        from vasa3d.audio.corpora import CORPORA_PATH

        payload = {"version": CACHE_VERSION, "settings": self._settings(), "specs": self.utterance_specs(),
                   "code": source_hash(*SOURCES, files=(CORPORA_PATH,))}
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def cache_path(self) -> Path:
        return Path(self.hparams.cache_dir) / self.cache_key()

    # ------------------------------------------------------------ making and loading
    def prepare_data(self) -> None:
        """Synthesise the utterances unless the cache has them (``self.synthesised`` counts the new ones)."""
        root = self.cache_path
        manifest_path = root / "manifest.json"
        self.synthesised = 0
        if manifest_path.is_file():
            return
        specs = self.utterance_specs()
        flat = [(split, i, spec) for split, items in specs.items() for i, spec in enumerate(items)]
        workers = max(1, min(self.hparams.synthesis_workers, len(flat)))
        blocks = [flat[k::workers] for k in range(workers)]
        started = time.perf_counter()
        root.mkdir(parents=True, exist_ok=True)
        jobs = [[(f"{split}_{i:05d}.npz", spec) for split, i, spec in block] for block in blocks]
        _run_workers(jobs, self._settings(), root)
        entries = []
        for split, i, spec in flat:
            entries.append({"file": f"{split}_{i:05d}.npz", "split": split, "index": i, "copy": 0, **spec})
            for k in range(1, spec.get("copies", 0) + 1):
                with np.load(root / f"{split}_{i:05d}_aug{k}.npz") as data:
                    applied = json.loads(str(data["applied"]))
                entries.append({"file": f"{split}_{i:05d}_aug{k}.npz", "split": split, "index": i, "copy": k,
                                **spec, "augment": applied})
        self.synthesised = len(entries)
        entries.sort(key=lambda e: (e["split"], e["index"], e["copy"]))
        manifest = {"version": CACHE_VERSION, "settings": self._settings(), "utterances": entries,
                    "phonemes": _phoneme_census(root, [e for e in entries if e["copy"] == 0]),
                    "seconds": round(time.perf_counter() - started, 2)}
        tmp = root / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(manifest_path)  # written last: a complete manifest means a complete cache

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        manifest = json.loads((self.cache_path / "manifest.json").read_text())
        self.splits = {"train": [], "val": [], "test": []}
        for entry in manifest["utterances"]:
            with np.load(self.cache_path / entry["file"]) as data:
                utt = {name: data[name] for name in data.files}
            utt.update(text=entry["text"], voice=entry["voice"], language=entry.get("language", "en"))
            self.splits[entry["split"]].append(utt)
        if self.hparams.video_folder:
            self.splits["train"] += load_video_pairs(self.hparams.video_folder, self.feature, self.hparams.latent_dim)
        self._check_lengths()

    def _check_lengths(self) -> None:
        short = [u.get("text", "?") for items in self.splits.values() for u in items
                 if len(u["audio"]) < self.hparams.window_frames]
        if short:
            raise ValueError(f"SpeechMotionDataModule: {len(short)} utterances are shorter than window_frames="
                             f"{self.hparams.window_frames} (e.g. {short[0]!r}); use a shorter window")

    # ------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.splits:
            self.setup()
        dataset = _Windows(self.splits[split], self.hparams.window_frames, self.hparams.prev_frames,
                           self.hparams.window_stride if split == "train" else self.hparams.window_frames)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, generator=generator,
                          num_workers=self.hparams.num_workers, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def heldout_utterances(self, split: str = "test") -> list[dict]:
        """Whole utterances of ``split`` for evaluation: dicts with ``audio [T, F]``, ``latent`` (``MotionLatent [T]``),
        ``mouth [T]``, ``waveform [N]`` float32, ``sample_rate``, ``text``, ``voice``, ``phonemes``."""
        from vasa3d.motion.latent import MotionLatent

        if not self.splits:
            self.setup()
        out = []
        for utt in self.splits[split]:
            latent = MotionLatent(torch.from_numpy(utt["dyn"]).float(), torch.from_numpy(utt["pose"]).float(),
                                  torch.from_numpy(utt["gaze"]).float())
            out.append({"audio": torch.from_numpy(utt["audio"]).float(), "latent": latent,
                        "mouth": mouth_opening(latent), "sample_rate": self.feature.sample_rate,
                        "waveform": utt["waveform"].astype(np.float32) / 32767.0, "text": utt.get("text", ""),
                        "voice": utt.get("voice", ""), "language": utt.get("language", "en"),
                        "phonemes": json.loads(str(utt.get("phonemes", "[]")))})
        return out
