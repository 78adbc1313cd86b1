"""Landmark metrics on mediapipe's 478-point face mesh (468 + 10 iris points), in pixels.

Landmarks are ``[..., 478, 2]`` (or ``[..., 478, 3]``; only x, y are used) arrays or tensors in
image pixels, x right, y down. Distances are reported in pixels and divided by the inter-ocular
distance (IOD: the outer eye corners, points 33 and 263) so that they compare across image sizes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vasa3d.metrics import MetricResult

NUM_LANDMARKS = 478
OUTER_EYE_CORNERS = (33, 263)  # mediapipe: the subject's right and left outer eye corner
INNER_LIP_MIDPOINTS = (13, 14)  # upper and lower inner lip, on the midline
# Every point of mediapipe's FACEMESH_LIPS (outer and inner lip contours), 40 points.
LIP_INDICES = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
    185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415,
)  # fmt: skip


def _as_xy(landmarks: np.ndarray | Tensor) -> np.ndarray:
    array = landmarks.detach().cpu().numpy() if isinstance(landmarks, Tensor) else np.asarray(landmarks)
    if array.ndim < 2 or array.shape[-2] != NUM_LANDMARKS or array.shape[-1] not in (2, 3):
        raise ValueError(
            f"landmarks must be [..., {NUM_LANDMARKS}, 2 or 3] (mediapipe's refined face mesh); got {array.shape}"
        )
    return array[..., :2].astype(np.float64)


def inter_ocular_distance(landmarks: np.ndarray | Tensor) -> np.ndarray:
    """Distance between the outer eye corners (33, 263) in pixels, ``[...]``."""
    xy = _as_xy(landmarks)
    return np.linalg.norm(xy[..., OUTER_EYE_CORNERS[0], :] - xy[..., OUTER_EYE_CORNERS[1], :], axis=-1)


def mouth_opening(landmarks: np.ndarray | Tensor) -> np.ndarray:
    """Inner-lip gap (points 13-14) divided by the IOD, per frame ``[...]``; NaN where landmarks are NaN."""
    xy = _as_xy(landmarks)
    gap = np.linalg.norm(xy[..., INNER_LIP_MIDPOINTS[0], :] - xy[..., INNER_LIP_MIDPOINTS[1], :], axis=-1)
    return gap / inter_ocular_distance(xy)


def landmark_distance(
    pred: np.ndarray | Tensor, target: np.ndarray | Tensor, indices: tuple[int, ...] | None = None, prefix: str = "lmd"
) -> dict[str, MetricResult]:
    """Mean L2 between predicted and target landmarks, in px and in units of the target's IOD.

    Args:
        pred: landmarks of the generated frames ``[T, 478, 2|3]`` (px).
        target: landmarks of the reference frames, same shape.
        indices: the points to compare; None = all 478.
        prefix: metric name prefix (``lmd`` -> ``lmd_px``, ``lmd_iod``).

    Frames where either set is NaN (no face detected) are skipped and counted in ``extra``.
    """
    pred_xy, target_xy = _as_xy(pred), _as_xy(target)
    if pred_xy.shape != target_xy.shape:
        raise ValueError(f"landmark sets differ in shape: {pred_xy.shape} vs {target_xy.shape}")
    iod = inter_ocular_distance(target_xy)
    if indices is not None:
        pred_xy, target_xy = pred_xy[..., list(indices), :], target_xy[..., list(indices), :]
    per_frame_px = np.linalg.norm(pred_xy - target_xy, axis=-1).mean(axis=-1).reshape(-1)
    per_frame_iod = (per_frame_px / iod.reshape(-1)) if per_frame_px.size else per_frame_px
    valid = np.isfinite(per_frame_px) & np.isfinite(per_frame_iod)
    extra = {"n_frames": int(valid.size), "n_missing": int((~valid).sum())}
    if not valid.any():
        reason = "no frame with landmarks in both sets"
        return {f"{prefix}_px": MetricResult(float("nan"), reason, extra), f"{prefix}_iod": MetricResult(float("nan"), reason, extra)}
    reason = f"landmarks missing in {extra['n_missing']}/{extra['n_frames']} frames" if extra["n_missing"] else None
    return {
        f"{prefix}_px": MetricResult(float(per_frame_px[valid].mean()), reason, extra),
        f"{prefix}_iod": MetricResult(float(per_frame_iod[valid].mean()), reason, extra),
    }


def detect_landmarks(frames: Tensor, video: bool = True) -> np.ndarray:
    """mediapipe's 478 landmarks per frame, ``[B, 478, 2]`` in pixels; NaN rows where no face is found.

    Args:
        frames: ``[B, 3, H, W]`` float in ``[0, 1]``, one face filling much of the frame (a crop).
        video: track across frames (mediapipe's video mode); False treats each frame alone.
    """
    import mediapipe as mp

    from vasa3d.quiet import native_stderr_silenced

    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [B, 3, H, W] in [0, 1]; got {tuple(frames.shape)}")
    height, width = frames.shape[-2:]
    rgb = (frames.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.full((len(rgb), NUM_LANDMARKS, 2), np.nan)
    with native_stderr_silenced(), mp.solutions.face_mesh.FaceMesh(
        static_image_mode=not video, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5
    ) as mesh:
        for index, image in enumerate(rgb):
            found = mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
            if found:
                points = found[0].landmark
                out[index] = [(point.x * width, point.y * height) for point in points]
    return out
