"""One portrait as a training set: the aligned crop, its mask, landmarks and camera."""

from __future__ import annotations

from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vasa3d.face import PortraitAnalysis, analyze_portrait
from vasa3d.face.template import load_template


def default_portrait() -> np.ndarray:
    """The embedded sample portrait: scikit-image's astronaut (512x512 RGB, one frontal face)."""
    from skimage import data

    return data.astronaut()


CHIN_LANDMARK = 152  # mediapipe face-mesh index of the chin tip


def head_region(analysis: PortraitAnalysis, template_path: str | None = None, dilate_frac: float = 0.03) -> np.ndarray:
    """``[S, S]`` float mask of the pixels the head model should explain.

    The photo's foreground also holds shoulders and clothes that no head model covers, and
    hair that reaches beyond the template's skull. The region is the posed template's
    silhouette plus the foreground above the chin (hair), dilated by ``dilate_frac`` of the
    crop so that the background around the head supervises the silhouette too.
    """
    template = load_template(template_path)
    size = analysis.crop.shape[0]
    verts = template.vertices @ analysis.viewmat[:3, :3].T + analysis.viewmat[:3, 3]
    pix = verts @ analysis.K.T
    pix = pix[:, :2] / pix[:, 2:3]
    region = np.zeros((size, size), np.uint8)
    triangles = np.round(pix[template.faces] * 4).astype(np.int32)  # 2 bits of sub-pixel precision
    for triangle in triangles:  # one at a time: fillPoly on many polygons cancels where they overlap
        cv2.fillConvexPoly(region, triangle, 1, lineType=cv2.LINE_8, shift=2)
    chin_row = int(np.ceil(analysis.landmarks[CHIN_LANDMARK, 1]))
    hair = analysis.mask > 0.5
    hair[max(chin_row, 0):] = False
    region |= hair.astype(np.uint8)
    radius = max(1, int(round(dilate_frac * size)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(region, kernel).astype(np.float32)


def portrait_sample(analysis: PortraitAnalysis, template_path: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of one analysed portrait, channels first (see :class:`PortraitDataModule`)."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(analysis.crop.transpose(2, 0, 1))).float(),
        "mask": torch.from_numpy(analysis.mask[None]).float(),
        "region": torch.from_numpy(head_region(analysis, template_path)[None]),
        "landmarks": torch.from_numpy(analysis.landmarks[:, :2].copy()).float(),
        "viewmat": torch.from_numpy(analysis.viewmat).float(),
        "K": torch.from_numpy(analysis.K).float(),
    }


class _Repeated(Dataset):
    def __init__(self, sample: dict[str, torch.Tensor], length: int) -> None:
        self.sample, self.length = sample, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample


class PortraitDataModule(L.LightningDataModule):
    """A single portrait, analysed once, served as the same view every step.

    Each batch holds ``image [B, 3, S, S]`` (crop in [0, 1]), ``mask [B, 1, S, S]``
    (foreground), ``region [B, 1, S, S]`` (where the head projects), ``landmarks [B, 478, 2]``
    (crop px), ``viewmat [B, 4, 4]`` and ``K [B, 3, 3]``.

    Args:
        portrait: path to the photo; None uses the embedded astronaut portrait.
        crop_size: side of the aligned square crop, in px.
        fov_deg: assumed vertical field of view of the portrait camera, in degrees.
        face_index: which face to use when the photo has several (0 = largest); None picks the largest.
        min_face_px: smallest face width accepted, in px of the original photo.
        steps_per_epoch: training steps that make one epoch (one validation pass per epoch).
        template_path: head template .npz; None uses the packaged one.
    """

    def __init__(
        self,
        portrait: str | None = None,
        crop_size: int = 256,
        fov_deg: float = 20.0,
        face_index: int | None = None,
        min_face_px: int = 64,
        steps_per_epoch: int = 250,
        template_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.analysis: PortraitAnalysis | None = None
        self.sample: dict[str, torch.Tensor] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.sample is not None:
            return
        hp = self.hparams
        source: Any = default_portrait() if hp.portrait is None else hp.portrait
        self.analysis = analyze_portrait(source, crop_size=hp.crop_size, face_index=hp.face_index,
                                         min_face_px=hp.min_face_px, fov_deg=hp.fov_deg)
        self.sample = portrait_sample(self.analysis, hp.template_path)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Repeated(self.sample, self.hparams.steps_per_epoch), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Repeated(self.sample, 1), batch_size=1)
