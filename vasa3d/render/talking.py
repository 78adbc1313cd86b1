"""Talking video from (avatar, audio, camera path): offline, or online window by window.

``TalkingHead`` joins a fitted avatar (a ``SubjectFitting`` checkpoint) with a motion source: an
``Audio2Motion`` checkpoint, which turns speech features into ``MotionLatent`` windows, or a
``.npz`` latent sequence saved by ``MotionLatent.save``. Online mode feeds the audio in chunks as it
would arrive, generates motion a window at a time, and renders each frame as soon as its latent
exists; it reports the latency to the first frame and the sustained frame rate, with motion
generation and rendering timed apart.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vasa3d.motion.latent import MotionLatent
from vasa3d.render.cameras import camera_path


@dataclass
class RenderStats:
    """Timings of one talking-video run (seconds unless named otherwise)."""

    frames: int = 0
    features_s: float = 0.0
    motion_s: float = 0.0
    render_s: float = 0.0
    wall_s: float = 0.0
    first_frame_s: float | None = None  # compute time until the first frame is ready
    buffering_s: float = 0.0  # audio that must arrive before the first window can start
    per_frame_render_ms: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Sustained frames per second over the whole run."""
        return self.frames / self.wall_s if self.wall_s > 0 else float("nan")

    def summary(self) -> str:
        first = "n/a" if self.first_frame_s is None else f"{1000 * self.first_frame_s:.0f} ms compute"
        return (f"{self.frames} frames in {self.wall_s:.1f} s: {self.fps:.1f} FPS sustained; first frame after "
                f"{first} + {1000 * self.buffering_s:.0f} ms of audio buffering; motion {self.motion_s:.1f} s, "
                f"rendering {self.render_s:.1f} s, features {self.features_s:.1f} s")


class TalkingHead:
    """A fitted avatar driven by speech (or by a latent sequence).

    Args:
        avatar: a ``SubjectFitting`` module (fitted; its checkpoint holds the portrait camera).
        motion: an ``Audio2Motion`` module, or None to drive it with latents only.
        features: the audio feature extractor the motion model was trained with.
    """

    def __init__(self, avatar, motion=None, features=None) -> None:
        if getattr(avatar, "reference_camera", None) is None:
            raise ValueError("the avatar checkpoint holds no portrait camera; it was written by an older version "
                             "of vasa3d: refit it with `lightning fit --config experiments/fit_subject.yaml`")
        self.avatar, self.motion, self.features = avatar, motion, features
        camera = avatar.reference_camera
        self.viewmat, self.K, self.native_size = camera["viewmat"], camera["K"], int(camera["size"])
        self.fps = float(motion.hparams.fps) if motion is not None else 25.0

    @classmethod
    def from_checkpoints(cls, avatar_ckpt: str | Path, motion_ckpt: str | Path | None = None) -> "TalkingHead":
        """Load the avatar and (optionally) the motion model, both on the CPU."""
        from vasa3d.systems import Audio2Motion, SubjectFitting

        for path in (avatar_ckpt, motion_ckpt):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such checkpoint")
        avatar = SubjectFitting.load_from_checkpoint(avatar_ckpt, map_location="cpu").eval()
        motion, features = None, None
        if motion_ckpt is not None:
            motion = Audio2Motion.load_from_checkpoint(motion_ckpt, map_location="cpu").eval()
            features = motion.feature_extractor()
        return cls(avatar, motion, features)

    # ------------------------------------------------------------ pieces
    def intrinsics(self, size: int) -> Tensor:
        """``[3, 3]`` the portrait's intrinsics scaled to a ``size`` px square."""
        K = self.K.clone()
        K[:2] *= size / self.native_size
        return K

    @torch.no_grad()
    def render_frame(self, latent: MotionLatent, viewmat: Tensor, size: int) -> np.ndarray:
        """One frame ``[size, size, 3]`` uint8 of ``latent [1]`` seen by ``viewmat [4, 4]``."""
        frame = self.avatar.avatar.frame(latent)
        out = self.avatar.avatar.render(frame, 0, viewmat[None], self.intrinsics(size)[None], size,
                                        self.avatar.background, self.avatar.hparams.backend)
        return (out.rgb[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)

    def _require_motion(self) -> None:
        if self.motion is None or self.features is None:
            raise ValueError("no motion model: pass an Audio2Motion checkpoint (--motion) to drive the avatar "
                             "with speech, or a latent .npz")

    # ------------------------------------------------------------ runs
    def render_latents(self, latents: MotionLatent, camera: str, size: int, writer, progress=None) -> RenderStats:
        """Render ``latents [T]`` along ``camera`` into ``writer`` (``.write(frame)``)."""
        stats = RenderStats()
        start = time.perf_counter()
        cameras = camera_path(camera, self.viewmat, len(latents), self.fps)
        for t in range(len(latents)):
            t0 = time.perf_counter()
            writer.write(self.render_frame(latents[t:t + 1], cameras[t], size))
            stats.per_frame_render_ms.append(1000 * (time.perf_counter() - t0))
            if stats.first_frame_s is None:
                stats.first_frame_s = time.perf_counter() - start
            if progress is not None:
                progress()
        stats.frames = len(latents)
        stats.render_s = sum(stats.per_frame_render_ms) / 1000
        stats.wall_s = time.perf_counter() - start
        return stats

    def stream(self, audio_chunks: Iterable[np.ndarray], total_frames: int, camera: str, size: int,
               seed: int = 0, window: int | None = None, **generate_kwargs) -> Iterator[tuple[np.ndarray, RenderStats]]:
        """Online mode: yield ``(frame, stats so far)`` as audio chunks (mono, the extractor's sample rate)
        arrive; motion is generated ``window`` frames at a time (default: the model's training window; a
        shorter one lowers the latency), each frame rendered once its latent exists."""
        self._require_motion()
        window = window or self.motion.hparams.window
        stats = RenderStats(buffering_s=window / self.fps)
        cameras = camera_path(camera, self.viewmat, total_frames, self.fps)
        start = time.perf_counter()
        feature_stream = self.features.stream()

        def features() -> Iterator[Tensor]:
            for chunk in audio_chunks:
                t0 = time.perf_counter()
                part = feature_stream.push(chunk)
                stats.features_s += time.perf_counter() - t0
                yield part
            t0 = time.perf_counter()
            part = feature_stream.finish()
            stats.features_s += time.perf_counter() - t0
            yield part

        windows = self.motion.stream(features(), window=window, seed=seed, **generate_kwargs)
        while True:
            t0 = time.perf_counter()
            window = next(windows, None)
            stats.motion_s += time.perf_counter() - t0
            if window is None:
                break
            for i in range(len(window)):
                if stats.frames >= total_frames:
                    break
                t1 = time.perf_counter()
                frame = self.render_frame(window[i:i + 1], cameras[stats.frames], size)
                stats.per_frame_render_ms.append(1000 * (time.perf_counter() - t1))
                stats.render_s += stats.per_frame_render_ms[-1] / 1000
                stats.frames += 1
                if stats.first_frame_s is None:
                    stats.first_frame_s = time.perf_counter() - start
                stats.wall_s = time.perf_counter() - start
                yield frame, stats
        # feature extraction runs inside the motion model's pull: keep the motion time net of it
        stats.motion_s = max(stats.motion_s - stats.features_s, 0.0)
        stats.wall_s = time.perf_counter() - start
