"""LightningDataModules: a still portrait, synthetic talking video, speech-motion pairs."""

from datamodules.portrait import PortraitDataModule
from datamodules.speech_motion import SpeechMotionDataModule
from datamodules.synthetic_video import SyntheticVideoDataModule

__all__ = ["PortraitDataModule", "SpeechMotionDataModule", "SyntheticVideoDataModule"]
