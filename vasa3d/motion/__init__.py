"""The motion latent and its conversions."""

from vasa3d.motion.latent import MotionLatent, axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["MotionLatent", "axis_angle_to_matrix", "matrix_to_axis_angle"]

# The rig, the motion encoder and M_e / M_p load lazily: they pull in mediapipe and OpenCV, which
# code that only needs ``MotionLatent`` should not pay for.
_LAZY = {
    "CONTROL_NAMES": "vasa3d.motion.rig",
    "ExpressionRig": "vasa3d.motion.rig",
    "controls_from_latent": "vasa3d.motion.rig",
    "latent_from_controls": "vasa3d.motion.rig",
    "LandmarkMotionEncoder": "vasa3d.motion.encoder",
    "ExpressionDeformer": "vasa3d.motion.deformation",
    "PoseDeformer": "vasa3d.motion.deformation",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vasa3d.motion' has no attribute {name!r}")
