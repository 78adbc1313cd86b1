"""Errors and warnings of face analysis; every message names the input, the problem and the fix."""

from __future__ import annotations

from vasa3d.errors import UserInputError


class FaceAnalysisError(UserInputError):
    """Base class: the portrait cannot be analysed as given."""


class UnreadableImageError(FaceAnalysisError):
    """The input is missing, not an image, or an array of an unsupported shape or dtype."""


class NoFaceError(FaceAnalysisError):
    """No face was detected in the image."""


class FaceTooSmallError(FaceAnalysisError):
    """The chosen face is narrower than the minimum width in pixels."""


class FaceIndexError(FaceAnalysisError, IndexError):
    """``face_index`` does not name one of the detected faces."""


class LandmarkError(FaceAnalysisError):
    """A face was detected but the face mesh could not place landmarks on it."""


class MultipleFacesWarning(UserWarning):
    """Several faces were found; one was chosen (the warning says which and how to pick another)."""
