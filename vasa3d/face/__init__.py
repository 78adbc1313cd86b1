"""Face analysis (portrait -> aligned crop, 478 landmarks, camera) and the head template."""

from vasa3d.face.analysis import (
    FaceLandmarker,
    PortraitAnalysis,
    alignment_affine,
    analyze_portrait,
    detect_faces,
    estimate_camera,
    head_pose_from_viewmat,
    intrinsics_from_fov,
    warp_to_crop,
)
from vasa3d.face.errors import (
    FaceAnalysisError,
    FaceIndexError,
    FaceTooSmallError,
    LandmarkError,
    MultipleFacesWarning,
    NoFaceError,
    UnreadableImageError,
)
from vasa3d.face.io import load_image
from vasa3d.face.template import REGION_NAMES, HeadTemplate, load_template, save_template

__all__ = [
    "REGION_NAMES",
    "FaceAnalysisError",
    "FaceIndexError",
    "FaceLandmarker",
    "FaceTooSmallError",
    "HeadTemplate",
    "LandmarkError",
    "MultipleFacesWarning",
    "NoFaceError",
    "PortraitAnalysis",
    "UnreadableImageError",
    "alignment_affine",
    "analyze_portrait",
    "detect_faces",
    "estimate_camera",
    "head_pose_from_viewmat",
    "intrinsics_from_fov",
    "load_image",
    "load_template",
    "save_template",
    "warp_to_crop",
]
