"""Speech in, talking video out: the offline pipeline shared by ``vasa3d talk`` and the fit's ``talk.mp4``.

Audio features → voice activity (silero-vad, where installed: closes the mouth in pauses) → the
motion model's latents → frames along a camera path → an mp4 with the audio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vasa3d.render.talking import RenderStats, TalkingHead
from vasa3d.render.video import BackgroundWriter, Mp4Writer

DEFAULT_TEXT = ("Hello! This is my three dimensional head, made from a single photo. "
                "It turns, it blinks, and it speaks with my voice.")


def default_speech(text: str = DEFAULT_TEXT, voice: str = "en-us") -> tuple[np.ndarray, int]:
    """``(waveform [N] float32, sample rate)``: ``text`` spoken by espeak-ng (no recording needed)."""
    from vasa3d.audio.speech import synthesize

    clip = synthesize(text, voice=voice, rate_wpm=160)
    return clip.waveform, clip.sample_rate


def voice_activity_or_none(waveform: np.ndarray, sample_rate: int, fps: float, frames: int) -> np.ndarray | None:
    """Voice activity per frame ``[T]`` in [0, 1], or None with a printed warning where silero-vad is absent."""
    from vasa3d.audio.vad import VADUnavailableError, voice_activity

    try:
        return voice_activity(waveform, sample_rate, fps, frames)
    except VADUnavailableError as error:
        print(f"warning: {error}; the mouth is not closed in pauses")
        return None


def speak_into(head: TalkingHead, waveform: np.ndarray, sample_rate: int, writer, camera: str = "orbit",
               size: int | None = None, seed: int = 0, vad: bool = True, window: int | None = None,
               progress: Callable[[], None] | None = None, on_motion: Callable[[int], None] | None = None,
               **guidance) -> RenderStats:
    """Speech features → voice activity → latents → frames into ``writer`` (``.write(frame)``; left open).

    ``waveform`` is mono at ``sample_rate``, the motion model's feature rate. ``on_motion(frames)`` is
    called once the latents exist, ``progress()`` after each frame. Returns the run's timings."""
    if head.motion is None or head.features is None:
        raise ValueError("speak_into: the TalkingHead has no motion model")
    start = time.perf_counter()
    features = head.features(waveform)
    features_s = time.perf_counter() - start
    activity = voice_activity_or_none(waveform, sample_rate, head.fps, len(features)) if vad else None
    latents = head.motion.generate(features, seed=seed, window=window, voice_activity=activity, **guidance)
    motion_s = time.perf_counter() - start - features_s
    if on_motion is not None:
        on_motion(len(latents))
    stats = head.render_latents(latents, camera, size or head.native_size, writer, progress)
    stats.features_s, stats.motion_s = features_s, motion_s
    stats.first_frame_s = (stats.first_frame_s or 0.0) + features_s + motion_s
    stats.wall_s += features_s + motion_s
    return stats


def talking_video(head: TalkingHead, waveform: np.ndarray, sample_rate: int, out: str | Path, camera: str = "orbit",
                  size: int | None = None, seed: int = 0, vad: bool = True,
                  progress: Callable[[], None] | None = None, **guidance) -> tuple[Path, RenderStats]:
    """:func:`speak_into` a new mp4 at ``out`` (with the audio). Returns the path and the run's timings."""
    writer = BackgroundWriter(Mp4Writer(out, head.fps))
    stats = speak_into(head, waveform, sample_rate, writer, camera, size, seed, vad, progress=progress, **guidance)
    return writer.close(waveform, sample_rate), stats
