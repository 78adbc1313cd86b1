"""Synthetic multi-pose talking video of one (or several) portraits, made by a teacher and cached.

Each subject's portrait is analysed once; a teacher renders ``num_clips`` training clips of
``frames_per_clip`` frames whose motion (talking, blinks, gaze, head pose over the training
yaw range) is sampled from the seed, plus held-out clips: ``heldout_clips`` with unseen
latents in the same pose range, and ``heldout_pose_clips`` whose yaw lies beyond it. With
``wide_clips``, training also sees the head turned further (50-60° yaw, ±25° pitch by default) on
both sides, so the held-out-pose band lies between poses the fit saw. Frames carry the teacher's
per-pixel reliability when it gives one (observed / completed / guessed). Every
frame's landmarks are re-detected with mediapipe (the supervision an external teacher would
give too). Clips are cached under ``cache_dir/<key>/`` with a ``manifest.json``; the key hashes
everything that changes the data, so a second run with the same settings reuses the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from rich.progress import track
from torch.utils.data import DataLoader, Dataset

from datamodules.portrait import default_portrait, portrait_sample
from vasa3d.cache import source_hash
from vasa3d.errors import UserInputError
from vasa3d.face import analyze_portrait
from vasa3d.motion.latent import MotionLatent
from vasa3d.motion.sampling import sample_talking_motion
from vasa3d.teachers import MeshLiftTeacher, Teacher
from vasa3d.teachers.evaluation import detect_landmarks

SPLITS = ("train", "heldout_latent", "heldout_pose")
CACHE_VERSION = 3  # 2: the subject files hold the portrait crop, mask and head region; 3: wide clips, reliability
# The code that makes the cached data: its source is part of the cache key (with the teacher's own module).
SOURCES = ("datamodules.synthetic_video", "datamodules.portrait", "vasa3d.face", "vasa3d.motion", "vasa3d.teachers",
           "vasa3d.gaussians", "vasa3d.losses")


class _Frames(Dataset):
    """Single frames of the cached clips of one split (see :class:`SyntheticVideoDataModule`)."""

    def __init__(self, clips: list[dict[str, np.ndarray]], cameras: list[dict[str, torch.Tensor]],
                 keep_undetected: bool = False) -> None:
        self.clips, self.cameras = clips, cameras
        self.index = [(c, t) for c, clip in enumerate(clips) for t in range(len(clip["frames"]))
                      if not np.isnan(clip["detected"][t]).any()
                      or (keep_undetected and not np.isnan(clip["landmarks"][t]).any())]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c, t = self.index[i]
        clip = self.clips[c]
        subject = int(clip["subject"])
        detected = clip["detected"][t][:, :2]
        if np.isnan(detected).any():  # a wide view mediapipe misses: the landmarks the teacher intended
            detected = clip["landmarks"][t][:, :2]
        item = {
            "image": torch.from_numpy(clip["frames"][t]).permute(2, 0, 1).float() / 255.0,
            "mask": torch.from_numpy(clip["masks"][t])[None].float() / 255.0,
            "landmarks": torch.from_numpy(np.ascontiguousarray(detected)).float(),
            "intended_landmarks": torch.from_numpy(clip["landmarks"][t]).float(),
            "dyn": torch.from_numpy(clip["dyn"][t]).float(),
            "pose": torch.from_numpy(clip["pose"][t]).float(),
            "gaze": torch.from_numpy(clip["gaze"][t]).float(),
            "subject": torch.tensor(subject),
            "clip": torch.tensor(c),
            "frame": torch.tensor(t),
        }
        if "reliability" in clip:
            item["reliability"] = torch.from_numpy(clip["reliability"][t])[None].float() / 255.0
        item.update(self.cameras[subject])
        return item


class SyntheticVideoDataModule(L.LightningDataModule):
    """Teacher-made talking video of the given portraits, with train and held-out splits.

    Batches hold single frames: ``image [B, 3, S, S]``, ``mask [B, 1, S, S]``, ``landmarks
    [B, 478, 2]`` (re-detected, crop px), ``intended_landmarks``, the latent (``dyn [B, D]``,
    ``pose [B, 6]``, ``gaze [B, 2]``), ``subject``, ``clip``, ``frame``, the subject's camera
    (``viewmat``, ``K``) and its neutral landmarks (``reference_landmarks [B, 478, 3]``).

    Args:
        portraits: photo paths, one subject each; None in the list is the embedded astronaut.
        portrait: one subject's photo, shorthand for ``portraits: [path]`` (a subject fit takes one).
        teacher: the 2D generator; None uses the built-in ``MeshLiftTeacher``.
        crop_size: side of the aligned crop, px.
        latent_dim: D of ``MotionLatent.dyn`` (at least the rig's 12 controls).
        num_clips: training clips per subject.
        frames_per_clip: frames per clip.
        fps: frame rate of the sampled motion.
        yaw_range_deg: head yaw range of training and held-out-latent clips, degrees.
        pitch_range_deg: head pitch range of all clips, degrees.
        wide_clips: training clips per side (left and right) whose yaw lies in ``wide_yaw_deg``: the wide views
            a viewer turns to, which the held-out-pose band (between the two ranges) never shows.
        wide_yaw_deg: |yaw| range of the wide training clips, degrees.
        wide_pitch_deg: pitch range of the wide training clips, degrees.
        heldout_clips: clips per subject with unseen latents in the training pose range.
        heldout_pose_clips: clips per subject whose |yaw| lies in ``heldout_yaw_deg``.
        heldout_yaw_deg: |yaw| range of the held-out-pose clips (beyond ``yaw_range_deg``, and short of
            ``wide_yaw_deg`` when there are wide clips: poses no training frame shows).
        seed: seed of all sampled motion.
        cache_dir: where clips and the manifest are cached.
        batch_size: frames per batch.
        val_split: the held-out split used for validation.
    """

    def __init__(
        self,
        portraits: list[str | None] | None = None,
        portrait: str | None = None,
        teacher: Teacher | None = None,
        crop_size: int = 256,
        latent_dim: int = 16,
        num_clips: int = 6,
        frames_per_clip: int = 24,
        fps: float = 25.0,
        yaw_range_deg: tuple[float, float] = (-30.0, 30.0),
        pitch_range_deg: tuple[float, float] = (-15.0, 15.0),
        wide_clips: int = 0,
        wide_yaw_deg: tuple[float, float] = (50.0, 60.0),
        wide_pitch_deg: tuple[float, float] = (-25.0, 25.0),
        heldout_clips: int = 1,
        heldout_pose_clips: int = 1,
        heldout_yaw_deg: tuple[float, float] = (35.0, 45.0),
        seed: int = 0,
        cache_dir: str = "outputs/cache/synthetic_video",
        batch_size: int = 16,
        val_split: str = "heldout_latent",
    ) -> None:
        super().__init__()
        if val_split not in SPLITS:
            raise UserInputError(f"val_split={val_split!r}: choose one of {SPLITS}")
        self.save_hyperparameters(ignore=["teacher"])
        if portrait is not None and portraits not in (None, [], [None]):
            raise UserInputError(f"SyntheticVideoDataModule: give portrait={portrait!r} or portraits={portraits!r}, "
                             "not both")
        self.portraits = [portrait] if portrait is not None else (list(portraits) if portraits else [None])
        self.teacher = teacher if teacher is not None else MeshLiftTeacher()
        self.manifest: dict | None = None
        self.splits: dict[str, list[dict[str, np.ndarray]]] = {}
        self.cameras: list[dict[str, torch.Tensor]] = []
        self.references: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------ cache
    def cache_key(self) -> str:
        """Hash of everything that determines the data: settings, portraits' bytes, the teacher's settings and
        the source of the code that makes the frames (:data:`SOURCES`), so changed code never reuses old clips."""
        # `portrait` is shorthand for `portraits`; the photos themselves are hashed below, by their bytes
        hp = {k: v for k, v in self.hparams.items() if k not in ("cache_dir", "batch_size", "val_split", "portrait")}
        hp["portraits"] = [None if p is None else str(p) for p in self.portraits]
        digest = hashlib.sha256(json.dumps(hp, sort_keys=True, default=str).encode())
        for portrait in self.portraits:
            digest.update(b"astronaut" if portrait is None else Path(portrait).read_bytes())
        # The teacher's public settings (its private state, such as a frame cursor, changes as it works).
        teacher_settings = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in vars(self.teacher).items()
                            if not k.startswith("_") and isinstance(v, (int, float, str, bool, torch.Tensor))}
        digest.update(f"{type(self.teacher).__qualname__}{sorted(teacher_settings.items())}v{CACHE_VERSION}".encode())
        digest.update(source_hash(*SOURCES, type(self.teacher).__module__).encode())
        return digest.hexdigest()[:16]

    @property
    def cache_path(self) -> Path:
        return Path(self.hparams.cache_dir) / self.cache_key()

    def prepare_data(self) -> None:
        """Render and cache every clip unless a complete cache with the same key exists.

        The folder is resolved once: the key hashes the source files on disk, and an edit made while the clips
        render (this process keeps the code it loaded) must not send the rest of them to another folder."""
        cache = self.cache_path
        manifest_path = cache / "manifest.json"
        if manifest_path.is_file():
            return
        cache.mkdir(parents=True, exist_ok=True)
        hp = self.hparams
        clips, subjects = [], []
        for s, portrait in enumerate(self.portraits):
            analysis = analyze_portrait(default_portrait() if portrait is None else portrait,
                                        crop_size=hp.crop_size)
            reference = portrait_sample(analysis)
            np.savez(cache / f"subject_{s:03d}.npz", viewmat=analysis.viewmat, K=analysis.K,
                     landmarks=analysis.landmarks, image=reference["image"].numpy(), mask=reference["mask"].numpy(),
                     region=reference["region"].numpy())
            subjects.append({"portrait": portrait or "<astronaut>", "file": f"subject_{s:03d}.npz"})
            lo, hi = hp.wide_yaw_deg
            plan = [("train", hp.yaw_range_deg)] * hp.num_clips + [("heldout_latent", hp.yaw_range_deg)] * hp.heldout_clips
            plan += [("heldout_pose", "beyond")] * hp.heldout_pose_clips  # wide clips last: the others keep their seeds
            plan += [("train", (lo, hi)), ("train", (-hi, -lo))] * hp.wide_clips
            for c, (split, yaw_range) in enumerate(track(plan, description=f"teacher clips, subject {s}")):
                seed = hp.seed * 100003 + s * 1009 + c
                if yaw_range == "beyond":
                    side = 1.0 if c % 2 == 0 else -1.0
                    lo, hi = hp.heldout_yaw_deg
                    yaw_range = (side * lo, side * hi) if side > 0 else (-hi, -lo)
                wide = c >= len(plan) - 2 * hp.wide_clips
                latents = sample_talking_motion(hp.frames_per_clip, hp.latent_dim, hp.fps, tuple(yaw_range),
                                                tuple(hp.wide_pitch_deg if wide else hp.pitch_range_deg), seed=seed)
                clips.append(self._render_clip(cache, analysis, latents, s, split, c))
        manifest = {"version": CACHE_VERSION, "key": cache.name, "settings": dict(self.hparams),
                    "teacher": type(self.teacher).__qualname__, "subjects": subjects, "clips": clips}
        manifest_path.write_text(json.dumps(manifest, indent=1, default=str))  # written last: marks completion

    def _render_clip(self, cache: Path, analysis, latents: MotionLatent, subject: int, split: str, index: int) -> dict:
        out = self.teacher.generate(analysis, latents)
        detected = detect_landmarks(out.frames)
        name = f"clip_{subject:03d}_{index:03d}.npz"
        np.savez_compressed(
            cache / name,
            frames=(out.frames.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8),
            masks=(out.masks[:, 0].numpy() * 255 + 0.5).astype(np.uint8),
            landmarks=out.landmarks.numpy().astype(np.float32), detected=detected.numpy().astype(np.float32),
            dyn=out.latents.dyn.numpy(), pose=out.latents.pose.numpy(),
            gaze=(out.latents.gaze if out.latents.gaze is not None else torch.zeros(len(latents), 2)).numpy(),
            subject=np.int64(subject),
            **({} if out.reliability is None else
               {"reliability": (out.reliability[:, 0].numpy() * 255 + 0.5).astype(np.uint8)}))
        found = int((~torch.isnan(detected).any(-1).any(-1)).sum())
        return {"file": name, "split": split, "subject": subject, "frames": len(latents), "detected": found}

    # ------------------------------------------------------------ loading
    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        manifest_path = self.cache_path / "manifest.json"
        if not manifest_path.is_file():
            self.prepare_data()
        self.manifest = json.loads(manifest_path.read_text())
        self.cameras, self.references = [], []
        for subject in self.manifest["subjects"]:
            with np.load(self.cache_path / subject["file"]) as data:
                self.cameras.append({"viewmat": torch.from_numpy(data["viewmat"]).float(),
                                     "K": torch.from_numpy(data["K"]).float(),
                                     "reference_landmarks": torch.from_numpy(data["landmarks"]).float()})
                self.references.append({
                    "image": torch.from_numpy(data["image"]).float(), "mask": torch.from_numpy(data["mask"]).float(),
                    "region": torch.from_numpy(data["region"]).float(),
                    "landmarks": torch.from_numpy(data["landmarks"][:, :2]).float(),
                    "viewmat": self.cameras[-1]["viewmat"], "K": self.cameras[-1]["K"]})
        self.splits = {split: [] for split in SPLITS}
        for clip in self.manifest["clips"]:
            with np.load(self.cache_path / clip["file"]) as data:
                self.splits[clip["split"]].append({k: data[k] for k in data.files})

    @property
    def sample(self) -> dict[str, torch.Tensor]:
        """The first subject's portrait as :func:`datamodules.portrait.portrait_sample` gives it (the
        reference view a subject fit paints its Gaussians from)."""
        if not self.references:
            self.setup()
        return self.references[0]

    def clips(self, split: str) -> list[dict[str, np.ndarray]]:
        """The cached clips of ``split`` (arrays: frames, masks, landmarks, detected, dyn, pose, gaze, subject)."""
        if self.manifest is None:
            self.setup()
        return self.splits[split]

    def dataset(self, split: str) -> _Frames:
        """Frames of one split. Held-out frames where mediapipe found no face are left out (their metrics compare
        detections); training keeps them with the landmarks the teacher intended (the widest views)."""
        return _Frames(self.splits[split], self.cameras, keep_undetected=split == "train")

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.dataset("train"), batch_size=self.hparams.batch_size, shuffle=True, generator=gen)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(self.hparams.val_split), batch_size=self.hparams.batch_size)

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(self.dataset(split), batch_size=self.hparams.batch_size)
                for split in ("heldout_latent", "heldout_pose")]

