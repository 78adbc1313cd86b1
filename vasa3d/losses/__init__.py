"""Losses: rendering, landmark (expression) and geometry consistency."""

from vasa3d.losses.geometry import (
    binding_regularizer, face_adjacency, laplacian_smoothness, mesh_edges, neighbour_color_smoothness,
    scale_regularizer)
from vasa3d.losses.landmarks import landmark_reprojection, project_points
from vasa3d.losses.rendering import dssim, masked_l1

__all__ = [
    "binding_regularizer", "dssim", "face_adjacency", "landmark_reprojection", "laplacian_smoothness",
    "masked_l1", "mesh_edges", "neighbour_color_smoothness", "project_points", "scale_regularizer",
]
