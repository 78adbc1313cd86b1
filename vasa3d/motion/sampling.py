"""Random talking-head motion with natural-looking statistics, for synthetic teacher videos.

Speech-like jaw motion (syllables at 3-6 Hz in bursts separated by pauses), slowly drifting
lip shapes and brows, blinks every 2-6 s lasting about 0.2 s, gaze that holds and jumps
(saccades), and a head pose that wanders smoothly over a configured yaw/pitch range.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from vasa3d.motion.latent import MotionLatent
from vasa3d.motion.rig import CONTROL_NAMES, NUM_CONTROLS, latent_from_controls


def _smooth_noise(rng: np.random.Generator, frames: int, fps: float, period_s: float, scale: float) -> np.ndarray:
    """Zero-mean noise low-passed to about ``period_s``, with standard deviation ``scale``."""
    sigma = max(period_s * fps / 4, 0.5)
    pad = int(4 * sigma) + 1
    smooth = gaussian_filter1d(rng.standard_normal(frames + 2 * pad), sigma=sigma)[pad:pad + frames]
    # Normalise by the filter's expected output deviation (not the clip's), so short clips stay in range.
    return smooth * math.sqrt(2 * math.sqrt(math.pi) * sigma) * scale


def _speech_jaw(rng: np.random.Generator, frames: int, fps: float) -> np.ndarray:
    rate = rng.uniform(3.0, 6.0)
    phase = np.cumsum(2 * math.pi * (rate + _smooth_noise(rng, frames, fps, 0.5, 0.8)) / fps) + rng.uniform(0, 6.3)
    syllables = np.clip(np.sin(phase), 0, None) ** 1.5 * rng.uniform(0.5, 0.9)
    talking = gaussian_filter1d((_smooth_noise(rng, frames, fps, 1.5, 1.0) > -0.5).astype(float), sigma=0.05 * fps)
    return syllables * talking


def _blinks(rng: np.random.Generator, frames: int, fps: float) -> np.ndarray:
    out = np.zeros(frames)
    t = rng.uniform(0.3, 3.0)
    while t * fps < frames:
        half = rng.uniform(0.07, 0.12) * fps
        centre = t * fps
        idx = np.arange(frames)
        out = np.maximum(out, np.clip(1.5 * (1 - np.abs(idx - centre) / half), 0, 1))  # closed at the middle frame
        t += rng.uniform(2.0, 6.0)
    return out


def _saccades(rng: np.random.Generator, frames: int, fps: float, amplitude: float) -> np.ndarray:
    out = np.zeros((frames, 2))
    t, target = 0, rng.uniform(-amplitude, amplitude, 2)
    while t < frames:
        hold = int(rng.uniform(0.4, 2.0) * fps)
        out[t:t + hold] = target
        t += hold
        target = rng.uniform(-amplitude, amplitude, 2)
    return gaussian_filter1d(out, sigma=0.02 * fps, axis=0)


def sample_talking_motion(
    frames: int,
    dim: int,
    fps: float = 25.0,
    yaw_range_deg: tuple[float, float] = (-30.0, 30.0),
    pitch_range_deg: tuple[float, float] = (-15.0, 15.0),
    seed: int = 0,
) -> MotionLatent:
    """A clip ``[frames]`` of talking motion; the head yaw sweeps ``yaw_range_deg`` (uniformly
    covered over a clip) and the pitch stays within ``pitch_range_deg``."""
    rng = np.random.default_rng(seed)
    controls = np.zeros((frames, NUM_CONTROLS))
    idx = {name: i for i, name in enumerate(CONTROL_NAMES)}
    controls[:, idx["jaw_open"]] = _speech_jaw(rng, frames, fps)
    for name, scale in (("smile_left", 0.25), ("lip_pucker", 0.2), ("lip_stretch", 0.2),
                        ("upper_lip_raise", 0.2), ("lower_lip_depress", 0.2), ("brow_frown", 0.15)):
        controls[:, idx[name]] = np.abs(_smooth_noise(rng, frames, fps, 1.2, scale))
    controls[:, idx["smile_right"]] = controls[:, idx["smile_left"]] * rng.uniform(0.7, 1.0) \
        + np.abs(_smooth_noise(rng, frames, fps, 1.2, 0.05))
    brows = np.clip(_smooth_noise(rng, frames, fps, 2.0, 0.35), 0, None)
    controls[:, idx["brow_raise_left"]] = brows
    controls[:, idx["brow_raise_right"]] = brows * rng.uniform(0.8, 1.0)
    blink = _blinks(rng, frames, fps)
    controls[:, idx["blink_left"]] = blink
    controls[:, idx["blink_right"]] = blink
    gaze = _saccades(rng, frames, fps, amplitude=0.25)

    lo, hi = (math.radians(v) for v in yaw_range_deg)
    phase = rng.uniform(0, 2 * math.pi)
    sweep = 0.5 + 0.5 * np.sin(np.linspace(0, 2 * math.pi, frames) * rng.uniform(0.7, 1.3) + phase)
    yaw = lo + (hi - lo) * np.clip(sweep + _smooth_noise(rng, frames, fps, 1.0, 0.05), 0, 1)
    plo, phi = (math.radians(v) for v in pitch_range_deg)
    pitch = (plo + phi) / 2 + (phi - plo) / 2 * np.tanh(_smooth_noise(rng, frames, fps, 1.5, 0.8))
    roll = _smooth_noise(rng, frames, fps, 2.0, math.radians(3.0))
    pose = np.zeros((frames, 6))
    pose[:, 0], pose[:, 1], pose[:, 2] = pitch, yaw, roll
    pose[:, 3:] = np.stack([_smooth_noise(rng, frames, fps, 2.0, 0.004) for _ in range(3)], axis=-1)
    return latent_from_controls(torch.tensor(controls, dtype=torch.float32), torch.tensor(pose, dtype=torch.float32),
                                dim, torch.tensor(gaze, dtype=torch.float32))
