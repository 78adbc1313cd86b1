"""``MotionLatent``: the motion contract between teachers, the 3D head and the audio model.

``dyn [..., D]`` holds facial dynamics (lips, jaw, expression, blinks, gaze), ``pose [..., 6]``
the head pose as an axis-angle rotation (radians, template frame) followed by a translation
(metres). ``D`` is set in config, never here. Optional ``gaze [..., 2]`` (yaw, pitch in radians)
and ``blink [..., 2]`` (left, right eye closure in [0, 1]) channels ride along when a source
provides them. Leading dimensions are free: ``[T]`` for a clip, ``[B, T]`` for a batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from axis-angle vectors ``[..., 3]`` (Rodrigues)."""
    angle = axis_angle.norm(dim=-1, keepdim=True)
    axis = axis_angle / angle.clamp(min=1e-12)
    x, y, z = axis.unbind(-1)
    zeros = torch.zeros_like(x)
    skew = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=-1).reshape(axis.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand(skew.shape)
    sin, cos = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    rot = eye + sin * skew + (1 - cos) * (skew @ skew)
    # Near zero, use the first-order form, which keeps gradients finite.
    small = (angle < 1e-6)[..., None]
    first_order = eye + torch.stack([zeros, -axis_angle[..., 2], axis_angle[..., 1], axis_angle[..., 2], zeros,
                                     -axis_angle[..., 0], -axis_angle[..., 1], axis_angle[..., 0], zeros],
                                    dim=-1).reshape(skew.shape)
    return torch.where(small, first_order, rot)


def matrix_to_axis_angle(rot: Tensor) -> Tensor:
    """Axis-angle vectors ``[..., 3]`` (angle in [0, pi]) from rotation matrices ``[..., 3, 3]``."""
    from vasa3d.gaussians.projection import rotmat_to_quat

    quat = rotmat_to_quat(rot)  # w >= 0
    sin_half = quat[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, quat[..., :1])
    return quat[..., 1:] * (angle / sin_half.clamp(min=1e-12))


@dataclass
class MotionLatent:
    """A motion latent (or a sequence or batch of them); see the module docstring for the channels."""

    dyn: Tensor  # [..., D]
    pose: Tensor  # [..., 6] axis-angle (3) + translation (3)
    gaze: Tensor | None = None  # [..., 2]
    blink: Tensor | None = None  # [..., 2]

    def __post_init__(self) -> None:
        if self.pose.shape[-1] != 6:
            raise ValueError(f"MotionLatent: pose must end in 6 (axis-angle + translation), got {tuple(self.pose.shape)}")
        if self.dyn.shape[:-1] != self.pose.shape[:-1]:
            raise ValueError(f"MotionLatent: dyn {tuple(self.dyn.shape)} and pose {tuple(self.pose.shape)} "
                             "must share their leading dimensions")
        for name in ("gaze", "blink"):
            value = getattr(self, name)
            if value is not None and (value.shape[-1] != 2 or value.shape[:-1] != self.pose.shape[:-1]):
                raise ValueError(f"MotionLatent: {name} must be [..., 2] with the same leading dimensions, "
                                 f"got {tuple(value.shape)}")

    # ------------------------------------------------------------ shape
    @property
    def batch_shape(self) -> torch.Size:
        """The leading dimensions (everything but the channel dimension)."""
        return self.pose.shape[:-1]

    @property
    def dim(self) -> int:
        """D, the size of ``dyn``."""
        return self.dyn.shape[-1]

    def __len__(self) -> int:
        return self.batch_shape[0]

    def _map(self, fn) -> "MotionLatent":
        return MotionLatent(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                               for f in fields(self)})

    def __getitem__(self, index) -> "MotionLatent":
        """Index the leading dimensions (``latent[3]``, ``latent[:, 10:20]``)."""
        index = index if isinstance(index, tuple) else (index,)
        return self._map(lambda t: t[index + (slice(None),)])

    def to(self, *args, **kwargs) -> "MotionLatent":
        """``Tensor.to`` on every channel."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "MotionLatent":
        return self._map(lambda t: t.detach())

    def reshape(self, *shape: int) -> "MotionLatent":
        """Reshape the leading dimensions."""
        return self._map(lambda t: t.reshape(*shape, t.shape[-1]))

    @staticmethod
    def cat(latents: list["MotionLatent"], dim: int = 0) -> "MotionLatent":
        """Concatenate along a leading dimension; optional channels must be present in all or none."""
        return MotionLatent._combine(latents, lambda ts: torch.cat(ts, dim=dim))

    @staticmethod
    def stack(latents: list["MotionLatent"], dim: int = 0) -> "MotionLatent":
        """Stack into a new leading dimension."""
        return MotionLatent._combine(latents, lambda ts: torch.stack(ts, dim=dim))

    @staticmethod
    def _combine(latents: list["MotionLatent"], fn) -> "MotionLatent":
        if not latents:
            raise ValueError("MotionLatent: nothing to combine")
        out = {}
        for f in fields(MotionLatent):
            values = [getattr(lat, f.name) for lat in latents]
            if all(v is None for v in values):
                out[f.name] = None
            elif any(v is None for v in values):
                raise ValueError(f"MotionLatent: channel {f.name!r} is missing in some of the latents")
            else:
                out[f.name] = fn(values)
        return MotionLatent(**out)

    @staticmethod
    def zeros(*batch_shape: int, dim: int, with_gaze: bool = False, with_blink: bool = False,
              dtype: torch.dtype = torch.float32) -> "MotionLatent":
        """A neutral latent: no expression, identity rotation, zero translation."""
        return MotionLatent(
            torch.zeros(*batch_shape, dim, dtype=dtype), torch.zeros(*batch_shape, 6, dtype=dtype),
            torch.zeros(*batch_shape, 2, dtype=dtype) if with_gaze else None,
            torch.zeros(*batch_shape, 2, dtype=dtype) if with_blink else None)

    # ------------------------------------------------------------ pose
    @property
    def rotation(self) -> Tensor:
        """Head rotation matrices ``[..., 3, 3]`` (template frame)."""
        return axis_angle_to_matrix(self.pose[..., :3])

    @property
    def translation(self) -> Tensor:
        """Head translation ``[..., 3]`` in metres."""
        return self.pose[..., 3:]

    def head_transform(self) -> Tensor:
        """``[..., 4, 4]`` rigid transform of the head: template frame -> posed template frame."""
        out = torch.zeros(self.batch_shape + (4, 4), dtype=self.pose.dtype, device=self.pose.device)
        out[..., :3, :3] = self.rotation
        out[..., :3, 3] = self.translation
        out[..., 3, 3] = 1
        return out

    def camera_extrinsics(self, viewmat: Tensor) -> Tensor:
        """World-to-camera ``[..., 4, 4]`` that shows the posed head in a camera ``viewmat [4, 4]``.

        Moving the head by the pose is the same as moving the camera by its inverse, so a
        renderer can keep the template fixed and use these extrinsics.
        """
        return viewmat @ self.head_transform()

    # ------------------------------------------------------------ interpolation
    def interpolate(self, other: "MotionLatent", weight: float | Tensor) -> "MotionLatent":
        """Blend towards ``other`` by ``weight`` (0 = self): linear for dyn, translation, gaze, blink;
        spherical (shortest arc) for the rotation."""
        w = torch.as_tensor(weight, dtype=self.pose.dtype, device=self.pose.device)
        w_ch = w[..., None] if w.dim() > 0 else w
        from vasa3d.gaussians.projection import quat_to_rotmat, rotmat_to_quat

        q0, q1 = rotmat_to_quat(self.rotation), rotmat_to_quat(other.rotation)
        q1 = torch.where((q0 * q1).sum(-1, keepdim=True) < 0, -q1, q1)
        cos = (q0 * q1).sum(-1, keepdim=True).clamp(-1, 1)
        theta = torch.acos(cos)
        sin = torch.sin(theta)
        linear = sin < 1e-6
        a = torch.where(linear, 1 - w_ch, torch.sin((1 - w_ch) * theta) / sin.clamp(min=1e-12))
        b = torch.where(linear, w_ch, torch.sin(w_ch * theta) / sin.clamp(min=1e-12))
        rot = matrix_to_axis_angle(quat_to_rotmat(F.normalize(a * q0 + b * q1, dim=-1)))
        lerp = lambda x, y: None if x is None else x + (y - x) * w_ch  # noqa: E731
        pose = torch.cat([rot, lerp(self.translation, other.translation)], dim=-1)
        return MotionLatent(lerp(self.dyn, other.dyn), pose, lerp(self.gaze, other.gaze),
                            lerp(self.blink, other.blink))

    # ------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` with one array per channel (float32)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name).detach().cpu().float().numpy()
                  for f in fields(self) if getattr(self, f.name) is not None}
        with open(path, "wb") as stream:
            np.savez(stream, **arrays)
        return path

    @staticmethod
    def load(path: str | os.PathLike) -> "MotionLatent":
        """Read a latent written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no motion latent file")
        with np.load(path) as data:
            missing = {"dyn", "pose"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: not a motion latent file (missing {sorted(missing)})")
            return MotionLatent(**{name: torch.from_numpy(data[name]) for name in data.files
                                   if name in {f.name for f in fields(MotionLatent)}})
