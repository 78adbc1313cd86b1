"""Camera helpers for novel views of a head in the template frame."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def yaw_rotation(yaw_deg: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[4, 4]`` rotation about the template's +y (up) axis; positive yaw turns the face to its left."""
    angle = math.radians(yaw_deg)
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0, s, 0], [0, 1, 0, 0], [-s, 0, c, 0], [0, 0, 0, 1]], dtype=dtype)


def yaw_viewmats(viewmat: Tensor, yaws_deg: tuple[float, ...] | list[float]) -> Tensor:
    """``[Y, 4, 4]`` world-to-camera matrices that show the head turned by each yaw about its centre.

    The head turns about the template origin (the head centre) in front of the fixed camera ``viewmat [4, 4]``.
    """
    turns = torch.stack([yaw_rotation(y, viewmat.dtype) for y in yaws_deg]).to(viewmat.device)
    return viewmat[None] @ turns
