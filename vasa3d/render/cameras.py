"""Camera paths for talking videos: static, orbit, or keyframes from a JSON file.

Every path is relative to the portrait's camera (``viewmat [4, 4]`` world-to-camera, OpenCV axes,
template frame: +y up, +z out of the face): a keyframe turns the view about the head centre by
``yaw`` and ``pitch`` (degrees, the head appears turned as by a head pose of that yaw and pitch;
the camera circles the other way) and moves the camera ``dolly`` metres closer (negative: further).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def view_about_head(viewmat: Tensor, yaw_deg: float, pitch_deg: float = 0.0, dolly_m: float = 0.0) -> Tensor:
    """``[4, 4]`` a world-to-camera matrix that sees the head turned by yaw/pitch, ``dolly_m`` closer."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    turn_y = torch.tensor([[cy, 0, sy, 0], [0, 1, 0, 0], [-sy, 0, cy, 0], [0, 0, 0, 1]], dtype=viewmat.dtype)
    turn_x = torch.tensor([[1, 0, 0, 0], [0, cp, -sp, 0], [0, sp, cp, 0], [0, 0, 0, 1]], dtype=viewmat.dtype)
    out = viewmat @ turn_y.to(viewmat.device) @ turn_x.to(viewmat.device)
    out = out.clone()
    out[2, 3] -= dolly_m  # camera z is the viewing direction: smaller depth = closer
    return out


def static_path(viewmat: Tensor, frames: int) -> Tensor:
    """``[T, 4, 4]``: the portrait's camera throughout."""
    return viewmat.expand(frames, 4, 4).clone()


def orbit_path(viewmat: Tensor, frames: int, fps: float, yaw_deg: float = 30.0, pitch_deg: float = 5.0,
               period_s: float = 6.0) -> Tensor:
    """``[T, 4, 4]``: the view swings through ``±yaw_deg`` (and gently in pitch) once per ``period_s``."""
    out = []
    for t in range(frames):
        phase = 2 * math.pi * t / (fps * period_s)
        out.append(view_about_head(viewmat, yaw_deg * math.sin(phase), pitch_deg * math.sin(2 * phase)))
    return torch.stack(out)


def keyframe_path(viewmat: Tensor, frames: int, fps: float, path: str | Path) -> Tensor:
    """``[T, 4, 4]`` from a JSON list of keyframes ``{"t": seconds, "yaw": deg, "pitch": deg, "dolly": m}``,
    linearly interpolated (held before the first and after the last)."""
    path = Path(path)
    try:
        keys = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the camera path ({error})") from error
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and "t" in k for k in keys):
        raise ValueError(f'{path}: expected a non-empty JSON list of {{"t": s, "yaw": deg, "pitch": deg, '
                         '"dolly": m}} keyframes')
    keys = sorted(keys, key=lambda k: float(k["t"]))
    times = np.array([float(k["t"]) for k in keys])
    channels = {name: np.array([float(k.get(name, 0.0)) for k in keys]) for name in ("yaw", "pitch", "dolly")}
    out = []
    for t in range(frames):
        value = {name: float(np.interp(t / fps, times, v)) for name, v in channels.items()}
        out.append(view_about_head(viewmat, value["yaw"], value["pitch"], value["dolly"]))
    return torch.stack(out)


def camera_path(spec: str, viewmat: Tensor, frames: int, fps: float) -> Tensor:
    """``[T, 4, 4]`` for ``spec``: ``static``, ``orbit`` (±30° every 6 s), ``slow_orbit`` (±25° every 16 s)
    or the path of a keyframe JSON file."""
    if spec == "static":
        return static_path(viewmat, frames)
    if spec == "orbit":
        return orbit_path(viewmat, frames, fps)
    if spec == "slow_orbit":
        return orbit_path(viewmat, frames, fps, yaw_deg=25.0, pitch_deg=4.0, period_s=16.0)
    if Path(spec).suffix.lower() == ".json":
        return keyframe_path(viewmat, frames, fps, spec)
    raise ValueError(f"--camera {spec!r}: use static, orbit, slow_orbit, or a keyframe .json file")
