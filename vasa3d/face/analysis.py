"""Portrait analysis: detect the face, place 478 landmarks, crop and align, segment, estimate the camera.

Pixel coordinates are continuous: pixel ``i`` spans [i, i + 1), so its centre is i + 0.5
(mediapipe's and gsplat's convention); a centred principal point is (S/2, S/2).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import cv2
import mediapipe as mp
import numpy as np

from vasa3d.errors import UserInputError
from vasa3d.face.errors import FaceIndexError, FaceTooSmallError, LandmarkError, MultipleFacesWarning, NoFaceError
from vasa3d.face.io import ImageInput, describe_source, load_image
from vasa3d.face.template import load_template
from vasa3d.quiet import native_stderr_silenced

MESH_INPUT_PX = 512  # the face mesh sees the face resampled into a square of this size
MESH_CONTEXT = 2.0  # that square is this many detection boxes wide, centred on the box
FRONTAL_ROTATION = np.diag([1.0, -1.0, -1.0])  # world-to-camera rotation of a camera facing the template's face
_RIGHT_EYE, _LEFT_EYE, _MOUTH_CORNERS = [33, 133], [362, 263], [61, 291]  # subject's right / left


@dataclass
class PortraitAnalysis:
    """Everything later stages need from one portrait (numpy, float32 unless stated)."""

    source: str  # the path as given, or "<array>"
    image: np.ndarray  # [H, W, 3] uint8 RGB, the loaded full image (EXIF orientation applied)
    crop: np.ndarray  # [S, S, 3] float32 RGB in [0, 1], eyes level, face centred
    mask: np.ndarray  # [S, S] float32 foreground probability in [0, 1]
    landmarks: np.ndarray  # [478, 3] crop px: x right, y down, z depth in px (mediapipe sign: smaller is nearer)
    landmarks_image: np.ndarray  # [478, 3] the same landmarks in original-image px
    crop_affine: np.ndarray  # [2, 3] image px -> crop px
    K: np.ndarray  # [3, 3] pinhole intrinsics in crop px
    viewmat: np.ndarray  # [4, 4] template(world)-to-camera, OpenCV axes (x right, y down, z forward)
    head_pose_deg: tuple[float, float, float]  # yaw (+: toward the subject's left), pitch (+: chin down), roll
    reprojection_error_px: float  # mean distance between the landmarks and the posed template's, crop px
    face_box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the detected face in the original image
    num_faces: int  # faces detected in the image
    face_index: int  # which of them was analysed, 0 = largest


def analyze_portrait(
    image_or_path: ImageInput,
    *,
    crop_size: int = 256,
    face_index: int | None = None,
    min_face_px: int = 64,
    fov_deg: float = 20.0,
) -> PortraitAnalysis:
    """Analyse one portrait: landmarks, an aligned square crop, a foreground mask and the camera.

    Raises a ``FaceAnalysisError`` subclass (unreadable image, no face, face too small, bad
    ``face_index``, landmarks failed) and warns ``MultipleFacesWarning`` when it had to choose a face.

    Args:
        image_or_path: the portrait: a file path, or an image array (see ``load_image``).
        crop_size: side of the aligned square crop, in pixels.
        face_index: which face to analyse when there are several, 0 = largest; None picks the largest.
        min_face_px: the smallest accepted face width (detection box) in original-image pixels.
        fov_deg: the assumed field of view of the crop's pinhole camera, in degrees.
    """
    if crop_size < 32:
        raise UserInputError(f"crop_size={crop_size} is too small; use at least 32 px (256 is typical)")
    if not 0.0 < fov_deg < 180.0:
        raise UserInputError(f"fov_deg={fov_deg} must lie strictly between 0 and 180 degrees (20 is typical)")
    source = describe_source(image_or_path)
    image = load_image(image_or_path)
    with FaceLandmarker() as landmarker:
        landmarks_image, boxes, chosen = landmarker.landmarks(image, face_index=face_index, min_face_px=min_face_px,
                                                              source=source)
    box = boxes[chosen]
    affine = alignment_affine(landmarks_image, crop_size)
    crop = warp_to_crop(image, affine, crop_size)
    landmarks = landmarks_image.copy()
    landmarks[:, :2] = landmarks_image[:, :2] @ affine[:, :2].T + affine[:, 2]
    landmarks[:, 2] *= math.sqrt(abs(np.linalg.det(affine[:, :2])))
    crop_u8 = np.round(crop * 255.0).astype(np.uint8)
    with native_stderr_silenced(), mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
        mask = np.clip(segmenter.process(crop_u8).segmentation_mask, 0.0, 1.0)
    K, viewmat, error = estimate_camera(landmarks[:468, :2], crop_size, fov_deg)
    height, width_px = image.shape[:2]
    return PortraitAnalysis(
        source=source,
        image=image,
        crop=crop,
        mask=mask.astype(np.float32),
        landmarks=landmarks.astype(np.float32),
        landmarks_image=landmarks_image.astype(np.float32),
        crop_affine=affine.astype(np.float32),
        K=K.astype(np.float32),
        viewmat=viewmat.astype(np.float32),
        head_pose_deg=head_pose_from_viewmat(viewmat),
        reprojection_error_px=error,
        face_box=(
            int(np.clip(np.floor(box[0]), 0, width_px)), int(np.clip(np.floor(box[1]), 0, height)),
            int(np.clip(np.ceil(box[2]), 0, width_px)), int(np.clip(np.ceil(box[3]), 0, height)),
        ),
        num_faces=len(boxes),
        face_index=chosen,
    )


class FaceLandmarker:
    """mediapipe's two face detectors and its face mesh, each built on first use and kept for the next image.

    Every graph runs in static-image mode (each image on its own), so an image gets the same boxes and landmarks as
    from graphs built for it alone; over many frames (``vasa3d.teachers.evaluation.detect_landmarks``) this saves
    building three graphs per frame. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._graphs: dict[str, object] = {}

    def _graph(self, name: str):
        if name not in self._graphs:
            with native_stderr_silenced():
                if name == "mesh":
                    self._graphs[name] = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                                                         max_num_faces=2)
                else:  # "detector1" (full range) or "detector0" (short range)
                    self._graphs[name] = mp.solutions.face_detection.FaceDetection(
                        model_selection=int(name[-1]), min_detection_confidence=0.5)
        return self._graphs[name]

    def process(self, name: str, image: np.ndarray):
        graph = self._graph(name)
        with native_stderr_silenced():
            return graph.process(image)

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def landmarks(self, image: np.ndarray, *, face_index: int | None = None, min_face_px: int = 64,
                  source: str = "<array>") -> tuple[np.ndarray, list[np.ndarray], int]:
        """The chosen face's [478, 3] landmarks (image px; z depth in px) in ``image`` [H, W, 3] uint8 RGB, with
        every detected face box and the chosen one's index (see :func:`analyze_portrait` for the arguments and
        the errors raised)."""
        boxes = detect_faces(image, self)
        if not boxes:
            raise NoFaceError(
                f"{source}: no face found in the {image.shape[1]}x{image.shape[0]} image — "
                "use a photo with one clearly visible face, not too turned away, covered or blurred"
            )
        chosen = _choose_face(boxes, face_index, source)
        box = boxes[chosen]
        width = box[2] - box[0]
        if width < min_face_px:
            raise FaceTooSmallError(
                f"{source}: the face is {width:.0f} px wide; at least {min_face_px} px is needed — "
                "use a closer crop or a larger photo"
            )
        return _mesh_landmarks(image, box, source, self), boxes, chosen


def detect_faces(image: np.ndarray, landmarker: FaceLandmarker | None = None) -> list[np.ndarray]:
    """Return face boxes [4] (x0, y0, x1, y1, image px; may reach outside) by decreasing area.

    Uses mediapipe's full-range detector, then the short-range one if the first finds nothing.

    Args:
        image: [H, W, 3] uint8 RGB.
        landmarker: whose detectors to use (they are kept for later images); None: built for this image only.
    """
    if landmarker is None:
        with FaceLandmarker() as own:
            return detect_faces(image, own)
    height, width = image.shape[:2]
    for model in (1, 0):
        result = landmarker.process(f"detector{model}", image)
        if result.detections:
            break
    else:
        return []
    boxes = []
    for detection in result.detections:
        rel = detection.location_data.relative_bounding_box
        x0, y0 = rel.xmin * width, rel.ymin * height
        boxes.append(np.array([x0, y0, x0 + rel.width * width, y0 + rel.height * height]))
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def _choose_face(boxes: list[np.ndarray], face_index: int | None, source: str) -> int:
    """Return the index of the face to analyse, warning when several were found and none was asked for."""
    if face_index is not None:
        if not 0 <= face_index < len(boxes):
            raise FaceIndexError(
                f"{source}: face_index={face_index}, but {len(boxes)} face(s) were found — "
                f"pass 0..{len(boxes) - 1} (0 is the largest) or None for the largest"
            )
        return face_index
    if len(boxes) > 1:
        x0, y0, x1, y1 = boxes[0]
        others = "1" if len(boxes) == 2 else f"1..{len(boxes) - 1}"
        warnings.warn(
            f"{source}: {len(boxes)} faces found; analysing the largest (face_index=0, {x1 - x0:.0f} px wide, "
            f"centred at x={0.5 * (x0 + x1):.0f}, y={0.5 * (y0 + y1):.0f}) — pass face_index={others} "
            "to analyse another (faces are numbered by decreasing size)",
            MultipleFacesWarning,
            stacklevel=4,
        )
    return 0


def _mesh_landmarks(image: np.ndarray, box: np.ndarray, source: str, landmarker: FaceLandmarker) -> np.ndarray:
    """Return [478, 3] landmarks (image px; z depth in px) of the face in ``box``, via an enlarged crop."""
    side = MESH_CONTEXT * max(box[2] - box[0], box[3] - box[1])
    scale = MESH_INPUT_PX / side
    centre = 0.5 * (box[:2] + box[2:])
    affine = np.array([[scale, 0.0, MESH_INPUT_PX / 2 - scale * centre[0]],
                       [0.0, scale, MESH_INPUT_PX / 2 - scale * centre[1]]])
    view = np.round(warp_to_crop(image, affine, MESH_INPUT_PX) * 255.0).astype(np.uint8)
    result = landmarker.process("mesh", view)
    if not result.multi_face_landmarks:
        raise LandmarkError(
            f"{source}: a face was detected at x={centre[0]:.0f}, y={centre[1]:.0f} but the face mesh could not "
            "place landmarks on it — use a sharper, more frontal, unobstructed photo of the face"
        )
    candidates = [np.array([[p.x, p.y, p.z] for p in face.landmark]) * MESH_INPUT_PX
                  for face in result.multi_face_landmarks]
    # A neighbour may share the enlarged crop: keep the face nearest its centre.
    points = min(candidates, key=lambda c: np.linalg.norm(c[:, :2].mean(axis=0) - MESH_INPUT_PX / 2))
    points[:, :2] = (points[:, :2] - affine[:, 2]) / scale
    points[:, 2] /= scale
    return points


def alignment_affine(landmarks: np.ndarray, crop_size: int) -> np.ndarray:
    """Return the [2, 3] affine (image px -> crop px) that levels the eyes and frames the face.

    FFHQ-style framing: the crop is max(4x the eye distance, 3.6x the eye-to-mouth distance)
    wide, centred a tenth of the way from the eyes toward the mouth.

    Args:
        landmarks: [478, 2+] mediapipe landmarks in image px.
        crop_size: side of the square crop in px.
    """
    right_eye = landmarks[_RIGHT_EYE, :2].mean(axis=0)
    left_eye = landmarks[_LEFT_EYE, :2].mean(axis=0)
    eye_centre = 0.5 * (left_eye + right_eye)
    eye_to_eye = left_eye - right_eye
    eye_to_mouth = landmarks[_MOUTH_CORNERS, :2].mean(axis=0) - eye_centre
    side = max(4.0 * np.linalg.norm(eye_to_eye), 3.6 * np.linalg.norm(eye_to_mouth))
    cos, sin = eye_to_eye / np.linalg.norm(eye_to_eye)
    linear = (crop_size / side) * np.array([[cos, sin], [-sin, cos]])
    centre = eye_centre + 0.1 * eye_to_mouth
    return np.concatenate([linear, (crop_size / 2 - linear @ centre)[:, None]], axis=1)


def warp_to_crop(image: np.ndarray, affine: np.ndarray, crop_size: int) -> np.ndarray:
    """Resample ``image`` [H,W,3] uint8 through ``affine`` [2,3] (image px -> crop px) to [S,S,3] float32 in [0,1].

    Shrinking first goes through an area resize (no aliasing); outside the image, edge pixels repeat.

    Args:
        image: [H, W, 3] uint8 RGB.
        affine: [2, 3] map from image px to crop px (continuous coordinates).
        crop_size: side S of the output in px.
    """
    linear, offset = affine[:, :2].astype(np.float64), affine[:, 2].astype(np.float64)
    shrink = math.sqrt(abs(np.linalg.det(linear)))
    if shrink < 0.9:
        height, width = image.shape[:2]
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        linear = linear @ np.diag([width / size[0], height / size[1]])
    # cv2 puts pixel centres at integers; our coordinates put them at +0.5.
    offset = offset + linear @ [0.5, 0.5] - 0.5
    matrix = np.concatenate([linear, offset[:, None]], axis=1)
    crop = cv2.warpAffine(image, matrix, (crop_size, crop_size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return crop.astype(np.float32) / 255.0


def intrinsics_from_fov(crop_size: int, fov_deg: float) -> np.ndarray:
    """Return [3, 3] pinhole intrinsics with the given field of view and a centred principal point.

    Args:
        crop_size: image side S in px.
        fov_deg: full field of view across S, in degrees.
    """
    focal = 0.5 * crop_size / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[focal, 0.0, crop_size / 2.0], [0.0, focal, crop_size / 2.0], [0.0, 0.0, 1.0]])


def estimate_camera(
    landmarks_2d: np.ndarray, crop_size: int, fov_deg: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit the template's 468 landmark vertices to 2D landmarks with solvePnP.

    Returns (K [3,3], viewmat [4,4] world-to-camera in OpenCV axes, mean reprojection error px).

    Args:
        landmarks_2d: [468, 2] mediapipe landmarks 0..467 in px of an S x S image.
        crop_size: image side S in px.
        fov_deg: the assumed field of view, in degrees.
    """
    K = intrinsics_from_fov(crop_size, fov_deg)
    world = load_template().vertices[:468].astype(np.float64)
    pixels = np.ascontiguousarray(landmarks_2d, dtype=np.float64)
    # Start from a frontal camera at the distance where the template's face width matches.
    distance = K[0, 0] * np.linalg.norm(world[234] - world[454]) / np.linalg.norm(pixels[234] - pixels[454])
    mean_world = world.mean(axis=0)
    depth = distance - mean_world[2]
    tvec = np.array([
        (pixels[:, 0].mean() - K[0, 2]) * depth / K[0, 0] - mean_world[0],
        (pixels[:, 1].mean() - K[1, 2]) * depth / K[1, 1] + mean_world[1],
        distance,
    ])
    rvec = cv2.Rodrigues(FRONTAL_ROTATION)[0]
    _, rvec, tvec = cv2.solvePnP(world, pixels, K, None, rvec, tvec[:, None], True, cv2.SOLVEPNP_ITERATIVE)
    projected = cv2.projectPoints(world, rvec, tvec, K, None)[0][:, 0]
    viewmat = np.eye(4)
    viewmat[:3, :3] = cv2.Rodrigues(rvec)[0]
    viewmat[:3, 3] = tvec[:, 0]
    return K, viewmat, float(np.linalg.norm(projected - pixels, axis=1).mean())


def head_pose_from_viewmat(viewmat: np.ndarray) -> tuple[float, float, float]:
    """Return (yaw, pitch, roll) in degrees of the head relative to a frontal camera.

    The head rotation is R_head = diag(1,-1,-1) @ R (R: viewmat's rotation), decomposed as
    Ry(yaw) Rx(pitch) Rz(roll) in the template frame: yaw > 0 turns the face toward the
    subject's left, pitch > 0 tips the chin down, roll > 0 lifts the subject's left ear.

    Args:
        viewmat: [4, 4] world(template)-to-camera matrix, OpenCV axes.
    """
    rotation = FRONTAL_ROTATION @ np.asarray(viewmat, dtype=np.float64)[:3, :3]
    yaw = math.degrees(math.atan2(rotation[0, 2], rotation[2, 2]))
    pitch = math.degrees(math.asin(float(np.clip(-rotation[1, 2], -1.0, 1.0))))
    roll = math.degrees(math.atan2(rotation[1, 0], rotation[1, 1]))
    return yaw, pitch, roll
