"""Robust speech input: level- and channel-invariant features, augmentation, every language's phonemes mapped."""

import json

import numpy as np
import pytest
from scipy.signal import welch

from vasa3d.audio.augment import (
    AudioAugment, active_power, coloured_noise, mix_at_snr, set_level, synthetic_rir, tilt_eq)
from vasa3d.audio.corpora import LANGUAGE_VOICES, sentences
from vasa3d.audio.features import AudioFeatureExtractor
from vasa3d.audio.io import resample
from vasa3d.audio.speech import synthesize
from vasa3d.audio.visemes import parse_phoneme, unmapped_phonemes, viseme_class

RATE = 16000


@pytest.fixture(scope="module")
def speech():
    clip = synthesize("We were away a year ago. My mother made a marvellous meal for everybody. Five fluffy "
                      "feathers floated over the valley.", "en-us", rate_wpm=150)
    return resample(clip.waveform, clip.sample_rate, RATE).astype(np.float64)


def _at_peak_dbfs(wave, dbfs):
    return wave / np.abs(wave).max() * 10 ** (dbfs / 20)


def test_features_do_not_depend_on_the_level(speech):
    loud, quiet = _at_peak_dbfs(speech, -3), _at_peak_dbfs(speech, -35)
    running = AudioFeatureExtractor()
    diff = (running(loud) - running(quiet)).abs().numpy()
    fixed = AudioFeatureExtractor(normalization="fixed")
    fixed_diff = (fixed(loud) - fixed(quiet)).abs().numpy()
    assert fixed_diff[:, :41].mean() > 0.5  # the constant normalisation follows the level: the test can tell
    assert diff[:, :41].mean() < 0.03 and np.quantile(diff, 0.99) < 0.2
    assert (diff[:, -1] == 0).mean() > 0.97  # the voiced flag agrees almost everywhere


def test_running_normalisation_removes_a_microphone_tilt(speech):
    clean = _at_peak_dbfs(speech, -6)
    tilted = tilt_eq(clean, RATE, 4.0)
    late = slice(-100, None)  # after the per-band means have adapted (4 s)
    errors = {}
    for mode in ("running", "fixed"):
        ext = AudioFeatureExtractor(normalization=mode)
        errors[mode] = float((ext(clean) - ext(tilted))[late, :40].abs().mean())
    assert errors["running"] < 0.5 * errors["fixed"]


def test_streaming_equals_whole_file_with_running_normalisation(speech):
    ext = AudioFeatureExtractor(normalization="running")
    wave = _at_peak_dbfs(speech, -20)
    chunks = np.split(wave, [1234, 1300, 40000, 90001])
    np.testing.assert_allclose(ext.from_chunks(chunks).numpy(), ext(wave).numpy(), rtol=0, atol=1e-5)


def test_reverb_decays_at_its_rt60():
    rng = np.random.default_rng(0)
    for rt60 in (0.2, 0.6):
        rir = synthetic_rir(rng, RATE, rt60)
        energy = np.cumsum(rir[::-1] ** 2)[::-1]  # Schroeder backward integration
        decay_db = 10 * np.log10(energy / energy[0])
        t20 = np.argmax(decay_db < -25) - np.argmax(decay_db < -5)  # samples for 20 dB of decay
        assert 3 * t20 / RATE == pytest.approx(rt60, rel=0.25)


@pytest.mark.parametrize("snr_db", [0.0, 15.0, 30.0])
def test_noise_is_mixed_at_the_requested_snr(speech, snr_db):
    noise = coloured_noise(np.random.default_rng(1), len(speech), 1.0)
    mixed = mix_at_snr(speech, noise, snr_db, RATE)
    measured = 10 * np.log10(active_power(speech, RATE) / np.mean((mixed - speech) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.01)


def test_noise_colours_have_their_spectral_slope():
    for beta in (0.0, 1.0, 2.0):
        freqs, power = welch(coloured_noise(np.random.default_rng(2), RATE * 4, beta), fs=RATE, nperseg=2048)
        band = (freqs > 100) & (freqs < 6000)
        slope = np.polyfit(np.log10(freqs[band]), np.log10(power[band]), 1)[0]
        assert slope == pytest.approx(-beta, abs=0.15)


def test_gain_sets_the_peak_and_soft_clips(speech):
    quiet = set_level(speech, -35.0)
    assert 20 * np.log10(np.abs(quiet).max()) == pytest.approx(-35.0, abs=0.05)
    driven = set_level(speech, -3.0, drive_db=9.0)
    assert np.abs(driven).max() < 1.0 and np.abs(driven).max() > 0.9  # saturated, never past full scale


def test_augment_is_seeded_and_each_probability_is_its_own_key(speech):
    all_on = AudioAugment(**{f"p_{name}": 1.0 for name in AudioAugment.NAMES})
    others = [speech[::-1].copy(), np.roll(speech, 5000)]
    first, applied = all_on(speech, RATE, np.random.default_rng(3), others)
    again, _ = all_on(speech, RATE, np.random.default_rng(3), others)
    np.testing.assert_array_equal(first, again)
    assert set(AudioAugment.NAMES) <= set(applied) and len(first) == len(speech) and first.dtype == np.float32
    assert -35.0 <= applied["gain"] <= -3.0 and 0.1 <= applied["reverb"] <= 0.8 and 0 <= applied["noise"] <= 30
    untouched, nothing = AudioAugment()(speech, RATE, np.random.default_rng(3))
    assert nothing == {} and np.allclose(untouched, speech, atol=1e-6)
    with pytest.raises(ValueError, match="unknown key"):
        AudioAugment.from_config({"p_reverberation": 0.5})


def test_every_phoneme_of_every_language_has_a_viseme():
    symbols = set()
    for language, voices in LANGUAGE_VOICES.items():
        for voice in voices:
            for text in sentences(language):
                symbols |= {p.symbol for p in synthesize(text, voice).phonemes}
    assert len(symbols) > 150
    assert unmapped_phonemes(symbols) == []
    assert parse_phoneme("xyz$") is None and unmapped_phonemes(["p", "$"]) == ["$"]  # the check can fail


def test_visemes_group_by_articulation():
    assert [viseme_class(s) for s in ("B", "p\\", "v#", "T", "d[", "s.", "tS;", "t_s\\", "R", "q", "?", "J", "u-",
                                      "W", "y", "&", "@2", "'aI", "_|")] == [
        "bilabial", "bilabial", "labiodental", "dental", "alveolar", "sibilant", "postalveolar", "alveolar", "r",
        "velar", "velar", "j", "round_close", "round_open", "round_close", "open", "schwa", "open", "boundary"]
    assert parse_phoneme("'aI") == ["open", "spread"] and parse_phoneme("ph") == ["bilabial"]
    with pytest.raises(KeyError, match="has no viseme"):
        viseme_class("$")


def test_the_manifest_counts_phonemes_and_none_is_unmapped(tmp_path):
    from datamodules.speech_motion import SpeechMotionDataModule

    dm = SpeechMotionDataModule(num_utterances=24, window_frames=20, prev_frames=5, n_mels=16, val_fraction=0.1,
                                test_fraction=0.1, languages=("ar", "cmn", "ja", "ko", "hi", "vi"),
                                variants=("", "f2"), rate_range=(120, 300), augment={"p_noise": 1.0, "p_gain": 1.0},
                                augment_copies=1, cache_dir=str(tmp_path))
    dm.prepare_data()
    manifest = json.loads((dm.cache_path / "manifest.json").read_text())
    census = manifest["phonemes"]
    assert census["distinct"] > 40 and census["unmapped_count"] == 0 and census["unmapped"] == []
    assert {"ar", "cmn", "ja", "ko", "hi", "vi"} == {u["language"] for u in manifest["utterances"]}
    augmented = [u for u in manifest["utterances"] if u["copy"] == 1]
    assert augmented and all(u["split"] == "train" and "noise" in u["augment"] for u in augmented)
    dm.setup("fit")
    clean, noisy = dm.splits["train"][0], dm.splits["train"][1]
    np.testing.assert_array_equal(clean["dyn"], noisy["dyn"])  # the same motion target, different sound
    assert not np.allclose(clean["audio"], noisy["audio"])


def test_voice_activity_closes_only_the_mouth_and_only_in_silence():
    import torch

    from vasa3d.audio.visemes import MOUTH_CHANNELS, close_mouth_in_silence
    from vasa3d.motion.latent import MotionLatent

    latent = MotionLatent(torch.rand(100, 16) + 0.5, torch.rand(100, 6), torch.rand(100, 2))
    activity = np.zeros(100)
    activity[40:60] = 1.0
    gated = close_mouth_in_silence(latent, activity, fps=25.0)
    mouth, other = MOUTH_CHANNELS, [c for c in range(16) if c not in MOUTH_CHANNELS]
    assert gated.dyn[:20, mouth].abs().max() < 1e-6 and gated.dyn[80:, mouth].abs().max() < 1e-6
    torch.testing.assert_close(gated.dyn[40:60, mouth], latent.dyn[40:60, mouth])  # speech untouched, no delay
    torch.testing.assert_close(gated.dyn[:, other], latent.dyn[:, other])
    torch.testing.assert_close(gated.pose, latent.pose)
    with pytest.raises(ValueError, match="activity frames"):
        close_mouth_in_silence(latent, activity[:50])
