"""vasa3d: one portrait and a speech clip to an animatable 3D Gaussian head."""

__version__ = "0.1.0"
