"""LightningModules, one per training recipe."""

from vasa3d.systems.audio2motion import Audio2Motion
from vasa3d.systems.latent_distillation import LatentDistillation
from vasa3d.systems.subject_fitting import DivergenceError, SubjectFitting

__all__ = ["Audio2Motion", "DivergenceError", "LatentDistillation", "SubjectFitting"]
