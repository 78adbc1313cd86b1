"""The motion latent and its conversions."""

from vasa3d.motion.latent import MotionLatent, axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["MotionLatent", "axis_angle_to_matrix", "matrix_to_axis_angle"]
