"""3D Gaussians: projection, CPU compositing, the rasterisation API and the Gaussian head."""

from vasa3d.gaussians.render import RenderOutput, rasterize

__all__ = ["RenderOutput", "rasterize"]
