"""LightningDataModules that assemble vasa3d's parts into training data."""

from datamodules.portrait import PortraitDataModule

__all__ = ["PortraitDataModule"]
