"""The ``Teacher`` protocol: a 2D talking-head generator that animates one portrait by motion latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from vasa3d.face.analysis import PortraitAnalysis
from vasa3d.motion.latent import MotionLatent


@dataclass
class TeacherOutput:
    """T frames of the subject, with the motion they show.

    ``frames [T, 3, H, W]`` in [0, 1] (the portrait's aligned crop camera), ``masks
    [T, 1, H, W]`` where the head is (ones when the teacher does not know), ``latents`` the
    motion actually shown (``[T]``), ``landmarks [T, 478, 2]`` in frame px where the teacher
    intended (or, for recorded frames, detected) them. ``reliability [T, 1, H, W]`` in [0, 1], optional:
    how far each pixel can be trusted (1 = the portrait showed it; lower where the teacher completed
    or guessed what it never saw); None = trusted everywhere.
    """

    frames: Tensor
    masks: Tensor
    latents: MotionLatent
    landmarks: Tensor
    reliability: Tensor | None = None


@runtime_checkable
class Teacher(Protocol):
    """Anything that turns (portrait, latents) into frames: the built-in reenactor, recorded video, ..."""

    def generate(self, portrait: PortraitAnalysis, latents: MotionLatent) -> TeacherOutput:
        """Frames of ``portrait`` showing ``latents [T]``."""
        ...
