"""benchmarks/real_speech.py: material with pauses, the sync figures, a latent-only run on a fake data folder."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from vasa3d.audio.features import AudioFeatureExtractor
from vasa3d.audio.speech import synthesize
from vasa3d.metrics import MetricResult
from vasa3d.metrics.lipsync import audio_energy_envelope

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("real_speech", ROOT / "benchmarks" / "real_speech.py")
real_speech = importlib.util.module_from_spec(spec)
sys.modules["real_speech"] = real_speech
spec.loader.exec_module(real_speech)
FPS = 25.0


def _write_word(path: Path, text: str, voice: str, rate: int = 44100) -> None:
    from vasa3d.audio.io import resample

    clip = synthesize(text, voice=voice)
    lead = np.zeros(int(0.15 * clip.sample_rate), np.float32)  # recordings start and end with some silence
    audio = resample(np.concatenate([lead, clip.waveform, lead]), clip.sample_rate, rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.stack([audio, audio], 1) * 0.5, rate)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder laid out as scripts/get_real_speech.sh leaves it (espeak stands in for the recordings here)."""
    root = tmp_path_factory.mktemp("real_speech")
    for language, voice, words in (("en", "en-us", "ball hat nose"), ("de", "de", "Ball Hut Nase")):
        for i, word in enumerate(words.split()):
            _write_word(root / real_speech.KTUBERLING / language / f"{i}_{word}.ogg", word, voice)
    for i, text in enumerate(["the number you have dialed is not in service", "please hang up and try again"]):
        _write_word(root / real_speech.ASTERISK_EN / f"prompt{i}.wav", text, "en-us", rate=8000)
    (root / "packages.tsv").write_text("package\tversion\tlicence\trecorded_by\nktuberling-data\t1\tGPL-2+\tx\n")
    return root


def test_recorded_material_separates_the_words_by_pauses(data):
    files = sorted((data / real_speech.KTUBERLING / "en").glob("*.ogg"))
    material = real_speech.recorded_material("en words", files, (0.4, 0.5), seed=1)
    assert len(material.spans) == 3 and material.waveform.dtype == np.float32
    starts, ends = np.array(material.spans).T
    assert starts[0] >= 0.4 and (starts[1:] - ends[:-1] >= 0.4 - 1e-6).all()
    assert material.duration_s - ends[-1] >= 0.4 - 1e-6
    # the trimmed words are sound, the pauses hold only the noise floor
    rms = audio_energy_envelope(material.waveform, real_speech.SAMPLE_RATE, FPS)
    centres = (np.arange(rms.size) + 0.5) / FPS
    pause = np.array([all(c < s - 0.05 or c > e + 0.05 for s, e in material.spans) for c in centres])
    assert rms[pause].max() < 10 ** (-55 / 20) and rms[~pause].max() > 0.05
    with pytest.raises(ValueError, match="at least 0.3 s"):
        real_speech.recorded_material("x", files, (0.2, 0.5))


def test_espeak_material_keeps_contiguous_phonemes_and_pauses():
    material = real_speech.espeak_material("de", 4, (0.4, 0.6), seed=0)
    clip = material.clip
    assert len(material.spans) == 4 and clip.text == "eins zwei drei vier"
    starts = np.array([p.start_s for p in clip.phonemes])
    ends = np.array([p.end_s for p in clip.phonemes])
    np.testing.assert_allclose(starts[1:], ends[:-1], atol=1e-9)
    assert ends[-1] == pytest.approx(clip.duration_s, abs=1e-3)
    assert abs(material.duration_s - clip.duration_s) < 1e-3
    spans = np.array(material.spans)
    assert (spans[1:, 0] - spans[:-1, 1] >= 0.4).all()
    with pytest.raises(real_speech.BenchmarkError, match="no number words"):
        real_speech.espeak_material("xx", 3, (0.4, 0.6))


def test_sync_figures_find_the_lag_the_gap_and_missing_faces():
    rng = np.random.default_rng(0)
    frames, hop = 100, real_speech.SAMPLE_RATE // 25
    activity = np.zeros(frames)
    activity[20:40] = activity[60:80] = 1.0
    waveform = np.concatenate([rng.standard_normal(hop) * (0.3 if a else 0.001) for a in activity]).astype(np.float32)
    envelope = audio_energy_envelope(waveform, real_speech.SAMPLE_RATE, FPS, frames)
    opening = np.roll(envelope, 2)  # the mouth trails the audio by 2 frames
    opening[:2] = envelope[0]
    opening[50] = np.nan  # one frame without a face
    out = real_speech.sync_figures(opening, waveform, FPS, activity)
    assert out["lag_frames"] == 2 and out["peak_corr"] > 0.95
    assert out["face_rate"] == pytest.approx(0.99) and out["open_gap_std"] > 1.5
    flat = real_speech.sync_figures(np.ones(frames), waveform, FPS, activity)
    assert np.isnan(flat["peak_corr"]) and np.isnan(flat["open_gap_std"]) and flat["face_rate"] == 1.0
    ref = real_speech.reference_figures(opening[:-3], np.nan_to_num(envelope[:-3]))
    assert ref["phone_ref_lag"] == 2 and ref["phone_ref_corr"] > 0.95


def _tiny_motion():
    """An untrained Audio2Motion on the benchmark's features, with its statistics and energy baseline fitted."""
    from vasa3d.systems.audio2motion import Audio2Motion

    extractor = AudioFeatureExtractor(16000, FPS, 40, True)
    torch.manual_seed(0)
    system = Audio2Motion(latent_dim=16, audio_dim=extractor.dim, energy_channel=40, d_model=32, num_layers=1,
                          num_heads=2, num_timesteps=20, sample_steps=2, window=25, prev_frames=5,
                          feature_config=dict(extractor.config())).eval()
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(4, 25, extractor.dim, generator=g)
    dyn = torch.randn(4, 25, 16, generator=g) * 0.1
    dyn[..., 0] = 0.3 * audio[..., 40] + 0.2
    system.fit_statistics([{"audio": audio, "dyn": dyn, "pose": torch.zeros(4, 25, 6), "gaze": torch.zeros(4, 25, 2)}])
    return system


def test_latent_only_run_writes_every_row(data, tmp_path, monkeypatch):
    system = _tiny_motion()
    monkeypatch.setattr(real_speech, "load_models", lambda args: (None, system, None, "tiny"))
    args = SimpleNamespace(data=data, avatar=None, motion=None, regression=None, languages=["en", "de"], words=3,
                           continuous_en=2, no_continuous=False, pause=(0.4, 0.6), size=None, seeds=2, seed=0,
                           latents_only=True, videos=None)
    rows, heldout, info = real_speech.evaluate(args)
    assert set(info["material"]) == {"en words", "de words", "en prompts"}
    assert info["packages"][0]["licence"] == "GPL-2+"
    assert list(rows)[:5] == ["en words (recorded) · diffusion", "en words (recorded) · diffusion + voice activity",
                              "en words (recorded) · diffusion + energy jaw + voice activity",
                              "en words (recorded) · energy→jaw baseline", "en espeak words · phoneme reference (ceiling)"]
    for words in ("en words", "de words"):  # silero-vad gates the mouth in the pauses: other figures
        gated, raw = rows[f"{words} (recorded) · diffusion + voice activity"], rows[f"{words} (recorded) · diffusion"]
        assert gated["open_gap_std"] != raw["open_gap_std"]
        shipped = rows[f"{words} (recorded) · diffusion + energy jaw + voice activity"]
        assert shipped["peak_corr"] != gated["peak_corr"]  # the energy baseline's jaw is blended in
    energy = rows["en words (recorded) · energy→jaw baseline"]
    assert energy["peak_corr"] > 0.5 and energy["lag_frames"] == 0  # jaw = affine(log energy): in sync
    assert isinstance(energy["face_rate"], MetricResult) and not energy["face_rate"].measured
    assert isinstance(energy["phone_ref_corr"], float) and energy["phone_ref_corr"] > 0.3
    assert not rows["de words (recorded) · diffusion"]["phone_ref_corr"].measured  # English only
    ceiling = rows["de espeak words · phoneme reference (ceiling)"]
    assert ceiling["peak_corr"] > 0.5 and ceiling["open_gap_std"] > 1.0
    assert set(heldout) == {"en", "de"} and heldout["en"]["energy→jaw baseline"] > 0.3
    assert set(heldout["en"]) == {"diffusion", "diffusion + energy jaw", "energy→jaw baseline", "regression baseline"}
    assert heldout["en"]["diffusion + energy jaw"] != heldout["en"]["diffusion"]
    assert not heldout["en"]["regression baseline"].measured
    assert "en prompts (recorded) · diffusion" in rows


def test_missing_data_or_avatar_fails_in_one_line(tmp_path, capsys):
    assert real_speech.main(["--data", str(tmp_path), "--latents-only", "--motion", str(tmp_path / "m.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "get_real_speech.sh" in err
    with pytest.raises(SystemExit):
        real_speech.main(["--data", str(tmp_path)])  # neither --avatar nor --latents-only
    assert "--avatar" in capsys.readouterr().err


def test_main_writes_both_tables_with_the_command(data, tmp_path, monkeypatch):
    from vasa3d.metrics.table import read_table

    system = _tiny_motion()
    monkeypatch.setattr(real_speech, "load_models", lambda args: (None, system, None, "tiny"))
    argv = ["--data", str(data), "--latents-only", "--languages", "de", "--words", "2", "--seeds", "1",
            "--out-dir", str(tmp_path)]
    assert real_speech.main(argv) == 0
    rows, meta = read_table(next(tmp_path.glob("*-real_speech.json")))
    assert meta["command"].startswith("python benchmarks/real_speech.py --data ")
    assert "ktuberling-data" in meta["notes"] and set(rows) == {
        "de words (recorded) · diffusion", "de words (recorded) · diffusion + voice activity",
        "de words (recorded) · diffusion + energy jaw + voice activity", "de words (recorded) · energy→jaw baseline",
        "de espeak words · phoneme reference (ceiling)"}
    heldout, _ = read_table(next(tmp_path.glob("*-real_speech_heldout.json")))
    assert set(heldout) == {"de"} and heldout["de"]["energy→jaw baseline lipsync_corr"].measured
    assert (tmp_path / next(tmp_path.glob("*-real_speech.json")).name.replace(".json", ".md")).is_file()


def test_without_a_motion_model_it_says_how_to_get_one(data, tmp_path, monkeypatch, capsys):
    import vasa3d.audio.pretrained

    monkeypatch.setattr(vasa3d.audio.pretrained, "DEFAULT_MOTION_MODEL", tmp_path / "absent.ckpt")
    assert real_speech.main(["--data", str(data), "--latents-only", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no motion model" in err and "--motion" in err
