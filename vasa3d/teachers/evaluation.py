"""Does a teacher show what it claims? Re-detect landmarks on its frames and compare."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from vasa3d.face import FaceAnalysisError, FaceLandmarker


def detect_landmarks(frames: Tensor, min_face_px: int = 32) -> Tensor:
    """mediapipe's 478 landmarks ``[T, 478, 3]`` (frame px x, y and depth z) on ``frames [T, 3, H, W]``, of the
    largest face (``analyze_portrait``'s landmarks, without its crop, matte and camera); NaN rows where no face is
    found. One set of mediapipe graphs serves every frame."""
    found = torch.full((frames.shape[0], 478, 3), math.nan)
    with FaceLandmarker() as landmarker:
        for t, frame in enumerate(frames):
            image = (frame.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    landmarks, _, _ = landmarker.landmarks(image, min_face_px=min_face_px)
            except FaceAnalysisError:
                continue
            found[t] = torch.from_numpy(landmarks.astype(np.float32))
    return found


def redetection_errors(frames: Tensor, intended: Tensor, min_face_px: int = 32) -> Tensor:
    """Mean distance in px ``[T]`` between mediapipe's landmarks on ``frames [T, 3, H, W]`` and
    ``intended [T, 478, 2]``; NaN where no face is found."""
    found = detect_landmarks(frames, min_face_px)[..., :2]
    return (found - intended.cpu().float()).norm(dim=-1).mean(dim=-1)


def yaw_pitch_deg(pose: Tensor) -> tuple[Tensor, Tensor]:
    """Head yaw and pitch in degrees ``[T]`` of ``MotionLatent.pose [T, 6]`` (yaw about +y, pitch about +x)."""
    from vasa3d.motion.latent import axis_angle_to_matrix

    rot = axis_angle_to_matrix(pose[..., :3])
    yaw = torch.rad2deg(torch.atan2(rot[..., 0, 2], rot[..., 2, 2]))
    pitch = torch.rad2deg(torch.asin((-rot[..., 1, 2]).clamp(-1, 1)))
    return yaw, pitch
