"""One portrait as a training set: the aligned crop, its mask, landmarks and camera."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vasa3d.face import PortraitAnalysis, analyze_portrait
from vasa3d.face.region import head_region


def default_portrait() -> np.ndarray:
    """The embedded sample portrait: scikit-image's astronaut (512x512 RGB, one frontal face)."""
    from skimage import data

    return data.astronaut()


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
