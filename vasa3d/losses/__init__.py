"""Losses: rendering, landmark (expression) and geometry consistency."""

from vasa3d.losses.consistency import inter_ocular, photometric_losses, teacher_frame_weights
from vasa3d.losses.geometry import (
    binding_regularizer, face_adjacency, laplacian_smoothness, mesh_edges, neighbour_color_smoothness,
    scale_regularizer)
from vasa3d.losses.landmarks import landmark_reprojection, landmark_weights, project_points
from vasa3d.losses.rendering import dssim, masked_l1, trimmed_l1

__all__ = [
    "binding_regularizer", "dssim", "face_adjacency", "inter_ocular", "landmark_reprojection", "landmark_weights",
    "laplacian_smoothness", "masked_l1", "mesh_edges", "neighbour_color_smoothness", "photometric_losses",
    "project_points", "scale_regularizer", "teacher_frame_weights", "trimmed_l1",
]
