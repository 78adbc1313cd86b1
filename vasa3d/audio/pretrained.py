"""The speech-to-motion model shipped with the package, and what its checkpoint records.

``vasa3d/audio/assets/audio2motion.ckpt`` is built from scratch by ``python scripts/build_motion_model.py``
(espeak-ng synthesis in 18 languages with augmentation, then ``Audio2Motion`` training on the CPU,
seeded; about 20 min, 3.5 MB). It is a slim Lightning checkpoint: ``state_dict`` and ``hyper_parameters`` (so
``Audio2Motion.load_from_checkpoint`` loads it; the feature settings are ``feature_config``), plus
``datamodule_hyper_parameters`` (the data recipe) and ``vasa3d_build`` (command, steps, data census).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

DEFAULT_MOTION_MODEL = Path(__file__).with_name("assets") / "audio2motion.ckpt"
BUILD_COMMAND = "python scripts/build_motion_model.py"


def shipped_motion_model() -> Path:
    """The shipped checkpoint's path; a clear error where it is missing (a source tree that never built it)."""
    from vasa3d.errors import MissingInputError

    if not DEFAULT_MOTION_MODEL.is_file():
        raise MissingInputError(f"{DEFAULT_MOTION_MODEL}: the shipped speech-to-motion model is missing; build it with "
                                f"`{BUILD_COMMAND}` or pass a trained Audio2Motion checkpoint with --motion")
    return DEFAULT_MOTION_MODEL


def describe_motion_model(path: str | os.PathLike) -> str:
    """One line saying which motion model ``path`` is: shipped or not, its data recipe and training steps."""
    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    build = checkpoint.get("vasa3d_build") or {}
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    shipped = path.resolve() == DEFAULT_MOTION_MODEL.resolve()
    languages = data.get("languages") or ["en"]
    parts = [f"{'shipped ' if shipped else ''}motion model {path}"]
    if data:
        parts.append(f"{len(languages)} languages, {data.get('num_utterances', '?')} utterances"
                     f"{' + augmentation' if data.get('augment') else ''}")
    if build:
        parts.append(f"{build.get('steps', '?')} steps, built by `{build.get('command', BUILD_COMMAND)}`")
    elif "global_step" in checkpoint:
        parts.append(f"{checkpoint['global_step']} steps")
    return "; ".join(parts)
