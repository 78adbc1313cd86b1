"""SpeechMotionDataModule: the batch contract, cache reuse, held-out sentences, determinism, real pairs."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.speech_motion import SpeechMotionDataModule
from vasa3d.motion.latent import MotionLatent

SMALL = dict(num_utterances=10, window_frames=20, prev_frames=5, latent_dim=16, n_mels=16, batch_size=4,
             val_fraction=0.2, test_fraction=0.2, voices=("en-us", "en-gb"), synthesis_workers=2)


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = SpeechMotionDataModule(cache_dir=str(tmp_path_factory.mktemp("cache")), **SMALL)
    dm.setup("fit")
    return dm


def test_batch_contract(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    B, T, P, D, F = 4, 20, 5, 16, datamodule.feature_dim
    expected = {"audio": (B, T, F), "dyn": (B, T, D), "pose": (B, T, 6), "gaze": (B, T, 2), "prev_dyn": (B, P, D),
                "prev_pose": (B, P, 6), "prev_gaze": (B, P, 2), "has_prev": (B,), "mouth": (B, T), "utterance": (B,)}
    assert {k: tuple(v.shape) for k, v in batch.items()} == expected
    assert batch["audio"].dtype == torch.float32 and batch["utterance"].dtype == torch.long
    assert batch["has_prev"].dtype == torch.bool and F == 16 + 3
    windows = datamodule.train_dataloader().dataset
    items = [windows[i] for i in range(len(windows))]
    first = [item for item in items if not item["has_prev"]]
    later = [i for i, item in enumerate(items) if item["has_prev"]]
    assert first and later and all((item["prev_dyn"] == 0).all() for item in first)
    for i in later[:3]:  # the history is the motion just before the window
        item, (u, start) = items[i], windows.index[i]
        np.testing.assert_allclose(item["prev_dyn"].numpy(), datamodule.splits["train"][u]["dyn"][start - 5:start])


def test_heldout_sentences_and_utterances(datamodule):
    sentences = datamodule.sentence_splits()
    assert not set(sentences["train"]) & (set(sentences["val"]) | set(sentences["test"]))
    assert not set(sentences["val"]) & set(sentences["test"])
    texts = {split: {u["text"] for u in datamodule.splits[split]} for split in ("train", "val", "test")}
    assert texts["test"] <= set(sentences["test"]) and texts["train"] <= set(sentences["train"])
    held = datamodule.heldout_utterances("test")
    assert len(held) == 2
    for utt in held:
        assert utt["audio"].shape == (len(utt["latent"]), datamodule.feature_dim)
        assert abs(len(utt["audio"]) - round(len(utt["waveform"]) / utt["sample_rate"] * 25)) <= 1
        assert utt["mouth"].shape == (len(utt["latent"]),)


def test_cache_reuse_and_determinism(datamodule, tmp_path):
    manifest = datamodule.cache_path / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    again = SpeechMotionDataModule(cache_dir=datamodule.hparams.cache_dir, **SMALL)
    again.setup("fit")
    assert again.synthesised == 0 and manifest.stat().st_mtime_ns == stamp
    assert len(json.loads(manifest.read_text())["utterances"]) == 10
    fresh = SpeechMotionDataModule(cache_dir=str(tmp_path / "other"), **SMALL)
    fresh.setup("fit")  # same seed, new cache: the same data, bitwise
    assert fresh.synthesised == 10
    for a, b in zip(datamodule.splits["train"], fresh.splits["train"]):
        np.testing.assert_array_equal(a["audio"], b["audio"])
        np.testing.assert_array_equal(a["dyn"], b["dyn"])
    other_seed = SpeechMotionDataModule(cache_dir=datamodule.hparams.cache_dir, **{**SMALL, "seed": 1})
    assert other_seed.cache_key() != datamodule.cache_key()


def test_wav_and_latent_pairs_from_a_folder(datamodule, tmp_path):
    folder = tmp_path / "videos"
    rate, seconds = 16000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    sf.write(folder.mkdir() or folder / "talk.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), rate)
    MotionLatent.zeros(50, dim=16, with_gaze=True).save(folder / "talk.npz")
    dm = SpeechMotionDataModule(cache_dir=datamodule.hparams.cache_dir, video_folder=str(folder), **SMALL)
    dm.setup("fit")
    assert dm.synthesised == 0 and dm.splits["train"][-1]["audio"].shape == (50, dm.feature_dim)
    assert len(dm.splits["train"]) == len(datamodule.splits["train"]) + 1


def test_real_video_pairs_from_an_mp4(tmp_path):
    """An mp4 with a face and speech becomes one (features, latents) pair of the video's length."""
    from skimage import data

    from datamodules.speech_motion import load_video_pairs
    from vasa3d.audio.features import AudioFeatureExtractor
    from vasa3d.audio.speech import synthesize
    from vasa3d.render.video import Mp4Writer

    portrait = data.astronaut()[:384:2, 64:448:2]  # 192 px, the face well inside
    clip = synthesize("One two three.", voice="en-us")
    frames = int(len(clip.waveform) / clip.sample_rate * 25)
    writer = Mp4Writer(tmp_path / "talk.mp4", 25.0)
    for t in range(frames):
        writer.write(np.roll(portrait, t % 3, axis=1))  # a slight shake
    writer.close(clip.waveform, clip.sample_rate)
    pairs = load_video_pairs(tmp_path, AudioFeatureExtractor(), dim=16)
    assert len(pairs) == 1
    pair = pairs[0]
    assert abs(len(pair["audio"]) - frames) <= 1 and pair["dyn"].shape == (len(pair["audio"]), 16)
    assert pair["pose"].shape[1] == 6 and np.isfinite(pair["dyn"]).all()
    assert np.abs(pair["pose"][:, :3]).max() < 0.1  # a still face: close to the neutral pose


def test_changed_code_changes_the_cache_key(tmp_path, monkeypatch, code_module):
    import datamodules.speech_motion as speech_motion

    name, edit = code_module
    monkeypatch.setattr(speech_motion, "SOURCES", (*speech_motion.SOURCES, name))
    dm = SpeechMotionDataModule(cache_dir=str(tmp_path / "cache"), **SMALL)
    key = dm.cache_key()
    assert SpeechMotionDataModule(cache_dir=str(tmp_path / "cache"), **SMALL).cache_key() == key  # stable
    edit("VERSION = 2\n")  # the code that makes the utterances changed
    assert dm.cache_key() != key


def test_word_lists_speak_a_share_of_the_training_sentences_word_by_word(tmp_path):
    """word_lists: that share of the training utterances becomes "Word. Word. Word." (val and test keep
    their sentences; voices, rates and pitches are drawn as without it); bad fractions fail early."""
    from datamodules.speech_motion import word_list

    assert word_list("The quick, brown fox!") == "The. quick. brown. fox."
    assert word_list("Привет, как дела?") == "Привет. как. дела."
    assert word_list("你好世界。") == "你好世界。" and word_list("Hello!") == "Hello!"  # nothing to split
    langs = ("en", "de", "ja")
    plain = SpeechMotionDataModule(num_utterances=60, languages=langs, cache_dir=str(tmp_path)).utterance_specs()
    lists = SpeechMotionDataModule(num_utterances=60, languages=langs, cache_dir=str(tmp_path),
                                   word_lists=0.5).utterance_specs()
    changed = [a["text"] != b["text"] for a, b in zip(plain["train"], lists["train"])]
    assert 0.25 < np.mean(changed) < 0.75
    for a, b, moved in zip(plain["train"], lists["train"], changed):
        assert {k: v for k, v in a.items() if k != "text"} == {k: v for k, v in b.items() if k != "text"}
        assert b["text"] == (word_list(a["text"]) if moved else a["text"])
    assert plain["val"] == lists["val"] and plain["test"] == lists["test"]
    with pytest.raises(ValueError, match="word_lists"):
        SpeechMotionDataModule(word_lists=1.5, cache_dir=str(tmp_path))
