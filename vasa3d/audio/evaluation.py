"""Audio-to-motion metrics on held-out utterances (pure torch).

- ``lipsync_corr``: Pearson correlation of the generated and the reference mouth opening (dyn channel
  ``jaw_open``) over an utterance; 1 = in sync. A constant prediction scores 0.
- ``mouth_err``: mean absolute mouth-opening error, in latent units (landmark lip error is measured
  downstream, through the 3D head).
- ``diversity_dyn`` / ``diversity_pose``: mean over frames and channels of the std across seeds of the
  generated sequence (dyn units; radians and metres for the pose); 0 for a deterministic model.
- ``pose_statistics``: head yaw, pitch and roll (degrees, from the rotation matrix) and translation
  (cm) over a long sequence, per minute: mean, std and the largest magnitude, and whether every
  frame is inside the long-audio bounds (|yaw| <= 30 deg, |pitch| <= 20 deg, translation within ±3 cm).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vasa3d.motion.latent import MotionLatent


def pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> float:
    """Pearson correlation of two equally long 1D sequences (0 where one is constant)."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    if a.shape != b.shape:
        raise ValueError(f"pearson: sequences of {a.numel()} and {b.numel()} values; they must match")
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > eps else 0.0


def lipsync_metrics(generated: MotionLatent, reference: MotionLatent, jaw_channel: int = 0,
                    rig=None) -> dict[str, float]:
    """``lipsync_corr`` and ``mouth_err`` of a generated ``MotionLatent [T]`` against the reference ``[T]``;
    with an ``ExpressionRig``, also ``lip_iod``: the mean distance of the 40 lip landmarks of the template
    driven by each latent (frontal view), in inter-ocular distances."""
    gen, ref = generated.dyn[..., jaw_channel].float().cpu(), reference.dyn[..., jaw_channel].float().cpu()
    metrics = {"lipsync_corr": pearson(gen, ref), "mouth_err": float((gen - ref).abs().mean())}
    if rig is not None:
        from vasa3d.metrics.lipsync import lip_landmark_error
        from vasa3d.motion.rig import controls_from_latent

        verts = rig.template_vertices.float()
        points = [rig.landmarks(verts, controls_from_latent(latent.to("cpu")).float())[..., :2]
                  for latent in (generated, reference)]
        metrics["lip_iod"] = float(lip_landmark_error(points[0], points[1]).value)
    return metrics


def diversity(samples: Sequence[MotionLatent]) -> dict[str, float]:
    """``diversity_dyn`` and ``diversity_pose``: mean std across samples ``MotionLatent [T]`` (one per seed)."""
    if len(samples) < 2:
        return {"diversity_dyn": 0.0, "diversity_pose": 0.0}
    stacked = MotionLatent.stack([s.to("cpu") for s in samples])
    return {"diversity_dyn": float(stacked.dyn.std(0).mean()), "diversity_pose": float(stacked.pose.std(0).mean())}


def evaluate_generator(generate: Callable[[Tensor, int], MotionLatent], utterances: Sequence[dict],
                       seeds: Sequence[int] = (0, 1, 2), jaw_channel: int = 0, rig=None) -> dict[str, float]:
    """Mean metrics over utterances for ``generate(audio_features [T, F], seed) -> MotionLatent [T]``.

    Each utterance is a dict with ``audio`` ``[T, F]`` features and ``latent`` the reference
    ``MotionLatent [T]``; lip-sync metrics are averaged over seeds and utterances (``rig``: see
    :func:`lipsync_metrics`).
    """
    if not utterances:
        raise ValueError("evaluate_generator: no held-out utterances to evaluate")
    totals: dict[str, float] = {}
    for utt in utterances:
        samples = [generate(utt["audio"], seed) for seed in seeds]
        metrics = diversity(samples)
        for sample in samples:
            for key, value in lipsync_metrics(sample, utt["latent"], jaw_channel, rig).items():
                metrics[key] = metrics.get(key, 0.0) + value / len(samples)
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + value / len(utterances)
    return totals


POSE_BOUNDS = {"yaw_deg": 30.0, "pitch_deg": 20.0, "translation_cm": 3.0}


def head_angles_deg(pose: Tensor) -> Tensor:
    """``[..., 3]`` (pitch, yaw, roll) in degrees from ``pose [..., 6]`` (axis-angle first): pitch about x,
    yaw about y, roll about z, read off the rotation matrix (``R = Ry(yaw) Rx(pitch) Rz(roll)``)."""
    from vasa3d.motion.latent import axis_angle_to_matrix

    rot = axis_angle_to_matrix(pose[..., :3].double())
    yaw = torch.atan2(rot[..., 0, 2], rot[..., 2, 2])
    pitch = torch.asin((-rot[..., 1, 2]).clamp(-1, 1))
    roll = torch.atan2(rot[..., 1, 0], rot[..., 1, 1])
    return torch.stack([pitch, yaw, roll], dim=-1).float() * (180.0 / math.pi)


def pose_statistics(latent: MotionLatent, fps: float, translation_reference: Tensor | None = None,
                    segment_s: float = 60.0) -> list[dict[str, float]]:
    """Per ``segment_s`` of ``latent [T]``: mean/std/max-magnitude of yaw and pitch (deg) and the largest
    translation offset (cm, per axis, from ``translation_reference [3]``, default zero), and ``in_bounds``
    (1.0 when every frame of the segment is inside ``POSE_BOUNDS``)."""
    angles = head_angles_deg(latent.pose.cpu())
    reference = torch.zeros(3) if translation_reference is None else translation_reference.cpu().float()
    offset_cm = (latent.pose[..., 3:].cpu().float() - reference) * 100.0
    frames = max(1, int(round(segment_s * fps)))
    out = []
    for start in range(0, len(angles), frames):
        pitch, yaw = angles[start:start + frames, 0], angles[start:start + frames, 1]
        shift = offset_cm[start:start + frames].abs().max().item()
        row = {"minute": start / fps / 60.0, "yaw_mean": yaw.mean().item(), "yaw_std": yaw.std().item(),
               "yaw_absmax": yaw.abs().max().item(), "pitch_mean": pitch.mean().item(),
               "pitch_std": pitch.std().item(), "pitch_absmax": pitch.abs().max().item(), "translation_absmax_cm": shift}
        row["in_bounds"] = float(row["yaw_absmax"] <= POSE_BOUNDS["yaw_deg"]
                                 and row["pitch_absmax"] <= POSE_BOUNDS["pitch_deg"]
                                 and shift <= POSE_BOUNDS["translation_cm"])
        out.append(row)
    return out
