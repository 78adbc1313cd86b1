"""Talking video from (avatar, audio, camera path): offline, or online window by window.

``TalkingHead`` joins a fitted avatar (a ``SubjectFitting`` checkpoint) with a motion source: an
``Audio2Motion`` checkpoint, which turns speech features into ``MotionLatent`` windows, or a
``.npz`` latent sequence saved by ``MotionLatent.save``. Online mode feeds the audio in chunks as it
would arrive, generates motion a window at a time, and renders each frame as soon as its latent
exists; it reports the latency to the first frame and the sustained frame rate, with motion
generation and rendering timed apart.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vasa3d.gaussians.render import rasterize
from vasa3d.motion.latent import MotionLatent
from vasa3d.render.cameras import camera_path


# Where a frame's time goes: the avatar's geometry for the latent, the renderer's three stages,
# motion generation (speech to latents, net of audio features) and writing the video.
STAGES = ("deformation", "projection", "binning", "compositing", "rasterization", "motion", "encoding")


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
    stage_ms: dict[str, float] = field(default_factory=dict)  # total ms per stage (see STAGES)

    def add_stage(self, name: str, ms: float) -> None:
        self.stage_ms[name] = self.stage_ms.get(name, 0.0) + ms

    def stage_table(self) -> str:
        """ms per frame of each stage, one line each (``vasa3d render --profile``, benchmarks/realtime.py)."""
        frames = max(self.frames, 1)
        stages = {**self.stage_ms, **({"motion": 1000 * self.motion_s} if self.motion_s > 0 else {})}
        lines = [f"{'stage':<12} {'ms/frame':>9}"]
        for name in STAGES:
            if name in stages:
                lines.append(f"{name:<12} {stages[name] / frames:9.2f}")
        lines.append(f"{'wall':<12} {1000 * self.wall_s / frames:9.2f}")
        return "\n".join(lines)

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
        from vasa3d import runs
        from vasa3d.systems import Audio2Motion, SubjectFitting

        avatar_ckpt = runs.resolve_checkpoint(avatar_ckpt)  # a run folder or root names its newest last.ckpt
        if motion_ckpt is not None:
            motion_ckpt = runs.resolve_checkpoint(motion_ckpt)
        avatar = SubjectFitting.load_from_checkpoint(avatar_ckpt, map_location="cpu").eval()
        motion, features = None, None
        if motion_ckpt is not None:
            motion = Audio2Motion.load_from_checkpoint(motion_ckpt, map_location="cpu").eval()
            features = motion.feature_extractor()
            from vasa3d.audio.vad import VADUnavailableError, preload

            # the online loop's voice activity model, readied now rather than before its first frame; without
            # silero-vad, a stream says so when it asks for one
            with suppress(VADUnavailableError):
                preload()
        return cls(avatar, motion, features)

    # ------------------------------------------------------------ pieces
    def intrinsics(self, size: int) -> Tensor:
        """``[3, 3]`` the portrait's intrinsics scaled to a ``size`` px square."""
        K = self.K.clone()
        K[:2] *= size / self.native_size
        return K

    @torch.inference_mode()
    def render_frame(self, latent: MotionLatent, viewmat: Tensor, size: int,
                     stats: RenderStats | None = None) -> np.ndarray:
        """One frame ``[size, size, 3]`` uint8 of ``latent [1]`` seen by ``viewmat [4, 4]``; with ``stats``,
        adds the time of each stage to ``stats.stage_ms``."""
        start = time.perf_counter()
        with _one_thread():  # small tensors: a barrier per op would cost more than a second core gives
            frame = self.avatar.avatar.frame(latent)
            g = self.avatar.avatar.world_gaussians(frame, 0)
        deformed = time.perf_counter()
        out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmat[None],
                        self.intrinsics(size)[None], size, size, backgrounds=self.avatar.background,
                        backend=self.avatar.hparams.backend)
        with _one_thread():
            image = (out.rgb[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        if stats is not None:
            stats.add_stage("deformation", 1000 * (deformed - start))
            stages = out.info.get("stage_ms")
            if stages is None:  # gsplat: one fused call
                stages = {"rasterization": 1000 * (time.perf_counter() - deformed)}
            for name, ms in stages.items():
                stats.add_stage(name, ms)
        return image

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
            frame = self.render_frame(latents[t:t + 1], cameras[t], size, stats)
            stats.per_frame_render_ms.append(1000 * (time.perf_counter() - t0))
            t1 = time.perf_counter()
            writer.write(frame)
            stats.add_stage("encoding", 1000 * (time.perf_counter() - t1))
            if stats.first_frame_s is None:
                stats.first_frame_s = time.perf_counter() - start
            if progress is not None:
                progress()
        stats.frames = len(latents)
        stats.render_s = sum(stats.per_frame_render_ms) / 1000
        stats.wall_s = time.perf_counter() - start
        return stats

    def stream(self, audio_chunks: Iterable[np.ndarray], total_frames: int, camera: str, size: int,
               seed: int = 0, window: int | None = None, vad: bool = True,
               **generate_kwargs) -> Iterator[tuple[np.ndarray, RenderStats]]:
        """Online mode: yield ``(frame, stats so far)`` as audio chunks (mono, the extractor's sample rate)
        arrive; motion is generated ``window`` frames at a time (default: the model's training window; a
        shorter one lowers the latency), each frame rendered once its latent exists.

        With ``vad`` (and silero-vad installed), voice activity closes the mouth in pauses as in the
        offline path, with the same frames: it is heard chunk by chunk (``VoiceActivityStream``) and
        applied by a causal gate (``SilenceGate``), so a window waits at most for the 32 ms of audio
        that completes the activity of its last frame."""
        self._require_motion()
        window = window or self.motion.hparams.window
        stats = RenderStats(buffering_s=window / self.fps)
        cameras = camera_path(camera, self.viewmat, total_frames, self.fps)
        start = time.perf_counter()
        pump = _AudioPump(audio_chunks, self.features, self.fps, stats, vad)
        windows = self.motion.stream(pump.features(), window=window, seed=seed, **generate_kwargs)
        windows = pump.blended(windows, self.motion)
        if pump.activity is not None:
            windows = pump.gated(windows)
        first_shown = threading.Event()
        for window in _run_ahead(windows, stats, after_first=first_shown):
            for i in range(len(window)):
                if stats.frames >= total_frames:
                    break
                t1 = time.perf_counter()
                frame = self.render_frame(window[i:i + 1], cameras[stats.frames], size, stats)
                stats.per_frame_render_ms.append(1000 * (time.perf_counter() - t1))
                stats.render_s += stats.per_frame_render_ms[-1] / 1000
                stats.frames += 1
                if stats.first_frame_s is None:
                    stats.first_frame_s = time.perf_counter() - start
                    first_shown.set()
                stats.wall_s = time.perf_counter() - start
                yield frame, stats
        # feature extraction runs inside the motion model's pull: keep the motion time net of it
        stats.motion_s = max(stats.motion_s - stats.features_s, 0.0)
        stats.wall_s = time.perf_counter() - start


class _AudioPump:
    """Pulls audio chunks for the online loop (on the motion thread): each chunk goes to the feature
    stream and, with voice activity, to a ``VoiceActivityStream``. :meth:`features` feeds the motion
    model; :meth:`blended` blends the energy baseline's jaw into each window, from its frames' features;
    :meth:`gated` then closes the mouth, pulling more audio first when the activity of the window's last
    frames is not yet heard (features need less look-ahead)."""

    def __init__(self, audio_chunks: Iterable[np.ndarray], extractor, fps: float, stats: RenderStats,
                 vad: bool) -> None:
        self.chunks = iter(audio_chunks)
        self.feature_stream = extractor.stream()
        self.stats, self.parts, self.finished, self.frames = stats, [], False, 0
        self.recent: list[Tensor] = []  # features not yet blended into a window (:meth:`blended`)
        self.vad = self.activity = self.gate = None
        if vad:
            from vasa3d.audio.vad import VADUnavailableError, VoiceActivityStream
            from vasa3d.audio.visemes import SilenceGate

            try:
                self.vad = VoiceActivityStream(fps, extractor.sample_rate)
            except VADUnavailableError as error:
                print(f"vasa3d: {error}; the mouth is not closed in pauses", flush=True)
            else:
                self.activity, self.gate = np.zeros(0), SilenceGate(fps)

    def pull(self) -> None:
        """Read one audio chunk (or end the streams when there is none)."""
        t0 = time.perf_counter()
        chunk = next(self.chunks, None)
        if chunk is None:
            part = self.feature_stream.finish()
            self.finished = True
        else:
            part = self.feature_stream.push(chunk)
        self.frames += len(part)
        self.parts.append(part)
        self.recent.append(part)
        if self.vad is not None:
            heard = self.vad.finish(self.frames) if chunk is None else self.vad.push(chunk)
            self.activity = np.concatenate([self.activity, heard])
        self.stats.features_s += time.perf_counter() - t0

    def features(self) -> Iterator[Tensor]:
        while self.parts or not self.finished:
            if not self.parts:
                self.pull()
            yield self.parts.pop(0)

    def blended(self, windows: Iterator[MotionLatent], motion) -> Iterator[MotionLatent]:
        """Each window with the energy baseline's jaw blended in (``Audio2Motion.blend_energy_jaw``), from
        the features of its own frames, as the offline path does before the silence gate."""
        for window in windows:
            while sum(map(len, self.recent)) < len(window) and not self.finished:
                self.pull()
            features = torch.cat(self.recent) if self.recent else torch.zeros(0, 0)
            own, rest = features[:len(window)], features[len(window):]
            self.recent = [rest] if len(rest) else []
            if len(own) < len(window):  # frames past the audio keep the model's jaw
                yield MotionLatent.cat([motion.blend_energy_jaw(window[:len(own)], own), window[len(own):]]) \
                    if len(own) else window
            else:
                yield motion.blend_energy_jaw(window, own)

    def gated(self, windows: Iterator[MotionLatent]) -> Iterator[MotionLatent]:
        from vasa3d.audio.visemes import close_mouth_in_silence

        done = 0
        try:
            for window in windows:
                while len(self.activity) < done + len(window) and not self.finished:
                    self.pull()
                activity = self.activity[done:done + len(window)]
                activity = np.pad(activity, (0, len(window) - len(activity)))  # frames past the audio: silence
                yield close_mouth_in_silence(window, activity, gate=self.gate)
                done += len(window)
        finally:
            if self.vad is not None:
                self.vad.close()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one thread inside the block (the per-frame deformation: tensors of a few
    thousand vertices and one MLP pass over the Gaussians), then restore the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_ahead(windows: Iterator[MotionLatent], stats: RenderStats, depth: int = 2,
               after_first: threading.Event | None = None) -> Iterator[MotionLatent]:
    """Yield ``windows`` while a thread already generates the next ones (at most ``depth`` ahead), so
    motion generation overlaps rendering; its time goes to ``stats.motion_s``. Errors re-raise here.

    With ``after_first``, the first window is generated here, on the caller's thread and all of its cores
    (nothing overlaps it: the consumer waits for it), and the thread starts on the second window once that
    event is set (the first frame is out), so the first frame's rendering has the cores to itself. (Giving
    the motion thread two cores for the first window instead was slower, 150-300 ms against 90-120 ms for a
    window of 10: its OpenMP team competed with the caller's, still spinning.)"""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()
    first = None
    if after_first is not None:
        t0 = time.perf_counter()
        with torch.inference_mode():
            first = next(windows, done)
        stats.motion_s += time.perf_counter() - t0
        if first is done:
            return

    def offer(item) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        # One thread for the motion model: it overlaps the renderer, which keeps the cores busy.
        torch.set_num_threads(1)
        if after_first is not None:
            while not (after_first.wait(0.1) or stop.is_set()):
                pass
        with torch.inference_mode():
            try:
                item = None
                while item is not done and not stop.is_set():
                    t0 = time.perf_counter()
                    item = next(windows, done)
                    stats.motion_s += time.perf_counter() - t0
                    offer(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                offer(exc)

    worker = threading.Thread(target=produce, name="vasa3d-motion", daemon=True)
    worker.start()
    try:
        if first is not None:
            yield first
            after_first.set()  # the consumer wants the next window: never hold it back
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
