"""LightningDataModules that assemble vasa3d's parts into training data."""

from datamodules.portrait import PortraitDataModule
from datamodules.synthetic_video import SyntheticVideoDataModule

__all__ = ["PortraitDataModule", "SyntheticVideoDataModule"]
