"""Synthetic talking video: deterministic motion, cached clips reused, disjoint splits."""

import json

import numpy as np
import pytest
import torch

from datamodules.synthetic_video import SyntheticVideoDataModule
from vasa3d.motion.sampling import sample_talking_motion
from vasa3d.teachers import MeshLiftTeacher
from vasa3d.teachers.evaluation import yaw_pitch_deg


def test_motion_is_deterministic_in_range_and_alive():
    a = sample_talking_motion(150, 16, yaw_range_deg=(-20, 20), seed=3)
    b = sample_talking_motion(150, 16, yaw_range_deg=(-20, 20), seed=3)
    torch.testing.assert_close(a.dyn, b.dyn)
    torch.testing.assert_close(a.pose, b.pose)
    assert not torch.equal(a.dyn, sample_talking_motion(150, 16, seed=4).dyn)
    yaw, pitch = yaw_pitch_deg(a.pose)
    assert yaw.min() < -10 and yaw.max() > 10 and yaw.abs().max() < 24  # sweeps the range, stays near it
    assert pitch.abs().max() < 20
    jaw, blink = a.dyn[:, 0], a.dyn[:, 10]
    assert jaw.max() > 0.3 and (jaw < 0.05).any()  # the mouth opens and closes
    assert blink.max() > 0.9 and (blink == 0).float().mean() > 0.7  # brief blinks
    assert torch.all(a.dyn[:, 12:] == 0)  # residual channels are zero from the sampler


def _datamodule(cache):
    teacher = MeshLiftTeacher(num_gaussians=6000, identity_steps=40, refine_steps=5)
    return SyntheticVideoDataModule(teacher=teacher, crop_size=128, num_clips=2, frames_per_clip=5,
                                    heldout_clips=1, heldout_pose_clips=1, cache_dir=str(cache), batch_size=4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    dm = _datamodule(cache)
    dm.prepare_data()
    dm.setup()
    return dm, cache


def test_manifest_and_cache_reuse(prepared):
    dm, cache = prepared
    manifest = dm.manifest
    assert [c["split"] for c in manifest["clips"]] == ["train", "train", "heldout_latent", "heldout_pose"]
    stamp = (dm.cache_path / "manifest.json").stat().st_mtime_ns
    again = _datamodule(cache)
    assert again.cache_key() == dm.cache_key()
    again.prepare_data()  # reuses: nothing rewritten
    assert (dm.cache_path / "manifest.json").stat().st_mtime_ns == stamp
    other = SyntheticVideoDataModule(teacher=again.teacher, crop_size=128, num_clips=3, frames_per_clip=5,
                                     cache_dir=str(cache))
    assert other.cache_key() != dm.cache_key()


def test_splits_are_disjoint_and_heldout_poses_lie_beyond_training(prepared):
    dm, _ = prepared
    train = np.concatenate([c["dyn"] for c in dm.splits["train"]])
    heldout = np.concatenate([c["dyn"] for c in dm.splits["heldout_latent"]])
    assert not any((heldout == row).all(-1).any() for row in train)  # no latent shared
    train_yaw = torch.cat([yaw_pitch_deg(torch.from_numpy(c["pose"]))[0] for c in dm.splits["train"]])
    pose_yaw = torch.cat([yaw_pitch_deg(torch.from_numpy(c["pose"]))[0] for c in dm.splits["heldout_pose"]])
    assert train_yaw.abs().max() < 33 and pose_yaw.abs().min() > 33


def test_batches_carry_frames_latents_and_detected_landmarks(prepared):
    dm, _ = prepared
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 128, 128) and batch["landmarks"].shape[1:] == (478, 2)
    assert torch.isfinite(batch["landmarks"]).all()
    error = (batch["landmarks"] - batch["intended_landmarks"]).norm(dim=-1).mean()
    assert error < 8  # mediapipe sees roughly what the teacher intended (px at 128)


def test_cache_key_ignores_teacher_state_but_not_its_settings(tmp_path):
    teacher = MeshLiftTeacher(num_gaussians=6000)
    dm = SyntheticVideoDataModule(teacher=teacher, cache_dir=str(tmp_path))
    key = dm.cache_key()
    teacher._cached = ("portrait", "lift")  # private working state
    assert dm.cache_key() == key
    teacher.background = torch.zeros(3)
    assert dm.cache_key() != key


def test_changed_code_rebuilds_the_cache(tmp_path, monkeypatch, code_module):
    import datamodules.synthetic_video as synthetic_video

    name, edit = code_module
    monkeypatch.setattr(synthetic_video, "SOURCES", (*synthetic_video.SOURCES, name))
    teacher = MeshLiftTeacher(num_gaussians=3000, identity_steps=10, refine_steps=0)
    settings = dict(teacher=teacher, crop_size=96, num_clips=1, frames_per_clip=2, heldout_clips=0,
                    heldout_pose_clips=0, cache_dir=str(tmp_path / "cache"))
    first = SyntheticVideoDataModule(**settings)
    first.prepare_data()
    old_key = first.cache_key()
    edit("VERSION = 2\n")  # the code that makes the frames changed
    second = SyntheticVideoDataModule(**settings)
    assert second.cache_key() != old_key
    assert not (second.cache_path / "manifest.json").exists()  # the old clips are not served...
    second.prepare_data()
    assert (second.cache_path / "manifest.json").is_file()  # ...they are made anew


def test_an_edit_while_the_clips_render_does_not_split_the_cache(tmp_path, monkeypatch):
    """The key hashes the source on disk: an edit during prepare_data must not send later clips elsewhere."""
    teacher = MeshLiftTeacher(num_gaussians=3000, identity_steps=10, refine_steps=0)
    dm = SyntheticVideoDataModule(teacher=teacher, crop_size=96, num_clips=2, frames_per_clip=2, heldout_clips=0,
                                  heldout_pose_clips=0, cache_dir=str(tmp_path / "cache"))
    first_key = dm.cache_key()
    calls = iter(range(1000))
    # every later look at the key sees "edited" code
    monkeypatch.setattr(SyntheticVideoDataModule, "cache_key",
                        lambda self: first_key if next(calls) == 0 else "edited0000000000")
    dm.prepare_data()
    folder = tmp_path / "cache" / first_key
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["key"] == first_key and all((folder / clip["file"]).is_file() for clip in manifest["clips"])
    assert not (tmp_path / "cache" / "edited0000000000").exists()


def test_wide_clips_train_beyond_the_heldout_band_with_reliability(prepared, tmp_path):
    dm, _ = prepared
    wide = SyntheticVideoDataModule(teacher=dm.teacher, crop_size=128, num_clips=2, frames_per_clip=5, heldout_clips=1,
                                    heldout_pose_clips=1, wide_clips=1, cache_dir=str(tmp_path), batch_size=4)
    wide.prepare_data()
    wide.setup()
    assert [c["split"] for c in wide.manifest["clips"]] == ["train"] * 2 + ["heldout_latent", "heldout_pose"] + ["train"] * 2
    for split in ("heldout_latent", "heldout_pose"):  # the held-out clips are the same motion as without wide clips
        np.testing.assert_array_equal(wide.splits[split][0]["pose"], dm.splits[split][0]["pose"])
    yaw = [yaw_pitch_deg(torch.from_numpy(c["pose"]))[0] for c in wide.splits["train"][2:]]
    assert all(48 < y.abs().min() and y.abs().max() < 63 for y in yaw)
    assert yaw[0].mean() * yaw[1].mean() < 0  # one clip to each side
    dataset = wide.dataset("train")
    detected_everywhere = sum(len(c["frames"]) for c in wide.splits["train"])
    assert len(dataset) == detected_everywhere  # undetected wide frames are kept, with the intended landmarks
    items = [dataset[i] for i in range(len(dataset))]
    assert all(torch.isfinite(item["landmarks"]).all() for item in items)
    reliability = torch.stack([item["reliability"] for item in items])
    assert reliability.min() >= 0 and reliability.max() <= 1
    assert reliability[-5:].mean() < reliability[:5].mean()  # wide views show more of what the portrait hid
