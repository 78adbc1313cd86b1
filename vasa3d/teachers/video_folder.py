"""``VideoFolderTeacher``: frames from any external 2D generator, or a real video of the subject.

Point it at a folder of frames (png/jpg/webp, taken in name order) or a video file that shows
the subject in the portrait's image coordinates (a VASA-1- or LivePortrait-style generator
driven by the portrait writes exactly that; a real video works when its first frame is the
portrait). Each call to :meth:`generate` hands out the next ``T`` frames, warped into the
portrait's aligned crop, with the motion latents that the landmark motion encoder reads off
them; the latents the caller asked for are not used, since recorded frames show what they show.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from vasa3d.face.analysis import PortraitAnalysis
from vasa3d.face.io import load_image
from vasa3d.motion.encoder import LandmarkMotionEncoder
from vasa3d.motion.latent import MotionLatent
from vasa3d.teachers.base import TeacherOutput
from vasa3d.teachers.evaluation import detect_landmarks

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class VideoFolderTeacher:
    """Recorded or externally generated frames as a teacher.

    Args:
        path: a folder of frames (taken in name order) or a video file readable by imageio/ffmpeg.
        latent_dim: D of the latents read off the frames (at least the rig's 12 controls).
        stride: use every n-th frame.
    """

    def __init__(self, path: str, latent_dim: int = 16, stride: int = 1) -> None:
        self.path = str(path)
        self.latent_dim = latent_dim
        self.stride = stride
        self._frames: list[np.ndarray] | None = None
        self._cursor = 0
        self._encoder: tuple[PortraitAnalysis, LandmarkMotionEncoder] | None = None

    def _load(self) -> list[np.ndarray]:
        if self._frames is None:
            source = Path(self.path)
            if source.is_dir():
                files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                if not files:
                    raise FileNotFoundError(f"{source}: no frames ({', '.join(IMAGE_SUFFIXES)}) in this folder")
                frames = [load_image(p) for p in files[:: self.stride]]
            elif source.is_file():
                import imageio.v3 as iio

                frames = [np.asarray(f)[..., :3] for f in iio.imiter(source)][:: self.stride]
            else:
                raise FileNotFoundError(f"{source}: no such folder or video file")
            self._frames = frames
        return self._frames

    def __len__(self) -> int:
        return len(self._load())

    def generate(self, portrait: PortraitAnalysis, latents: MotionLatent) -> TeacherOutput:
        """The next ``len(latents)`` frames, in the portrait's crop, with the latents read off them."""
        frames = self._load()
        count = len(latents)
        if self._cursor + count > len(frames):
            raise ValueError(f"{self.path}: {len(frames)} frames (stride {self.stride}) cannot supply another clip of "
                             f"{count} after {self._cursor}; use fewer or shorter clips")
        size = portrait.crop.shape[0]
        height, width = portrait.image.shape[:2]
        crops = []
        for index in range(self._cursor, self._cursor + count):
            frame = frames[index]
            if frame.shape[:2] != (height, width):
                raise ValueError(f"{self.path}: frame {index} is {frame.shape[1]}x{frame.shape[0]} but the portrait is "
                                 f"{width}x{height}; frames must be in the portrait's image coordinates")
            crops.append(cv2.warpAffine(frame, portrait.crop_affine.astype(np.float64), (size, size),
                                        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
        self._cursor += count
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        detected = detect_landmarks(images)
        found = ~torch.isnan(detected).any(-1).any(-1)
        if not found.any():
            raise ValueError(f"{self.path}: no face found in frames {self._cursor - count}..{self._cursor - 1}")
        if not found.all():
            warnings.warn(f"{self.path}: no face in {int((~found).sum())} of {count} frames; their latents are "
                          "copied from the nearest frame with one", stacklevel=2)
            nearest = torch.nonzero(found).squeeze(-1)
            fill = nearest[(torch.arange(count)[:, None] - nearest[None]).abs().argmin(dim=1)]
            detected = detected[fill]
        if self._encoder is None or self._encoder[0] is not portrait:  # built once per portrait, not per clip
            self._encoder = (portrait, LandmarkMotionEncoder.from_portrait(portrait, dim=self.latent_dim))
        shown = self._encoder[1].encode(detected.numpy())
        return TeacherOutput(images, torch.ones(count, 1, size, size), shown, detected[..., :2])
