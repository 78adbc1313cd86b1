"""Tests for portrait loading and analysis (mediapipe on CPU, the astronaut photo from scikit-image)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from vasa3d.face import (
    FaceIndexError,
    FaceTooSmallError,
    MultipleFacesWarning,
    NoFaceError,
    PortraitAnalysis,
    UnreadableImageError,
    analyze_portrait,
    estimate_camera,
    head_pose_from_viewmat,
    load_image,
    load_template,
    warp_to_crop,
)
from vasa3d.face.analysis import FRONTAL_ROTATION, intrinsics_from_fov


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def reference(astronaut: np.ndarray) -> PortraitAnalysis:
    return analyze_portrait(astronaut)


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Ry(yaw) Rx(pitch) Rz(roll), degrees."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def test_astronaut_analysis(reference: PortraitAnalysis, astronaut: np.ndarray) -> None:
    size = 256
    assert reference.source == "<array>" and reference.num_faces == 1 and reference.face_index == 0
    np.testing.assert_array_equal(reference.image, astronaut)
    assert reference.crop.shape == (size, size, 3) and reference.crop.dtype == np.float32
    assert 0.0 <= reference.crop.min() and reference.crop.max() <= 1.0
    landmarks = reference.landmarks
    assert landmarks.shape == (478, 3) and landmarks.dtype == np.float32
    assert (landmarks[:, :2] > 0).all() and (landmarks[:, :2] < size).all()
    right_eye, left_eye = landmarks[[33, 133], :2].mean(axis=0), landmarks[[362, 263], :2].mean(axis=0)
    assert abs(left_eye[1] - right_eye[1]) < 0.5  # eyes level
    assert left_eye[0] - right_eye[0] == pytest.approx(0.25 * size, rel=0.05)
    assert abs(0.5 * (left_eye[0] + right_eye[0]) - size / 2) < 1.0  # centred
    # The affine and the two landmark sets agree; crop colours match the image where they map.
    mapped = reference.landmarks_image[:, :2] @ reference.crop_affine[:, :2].T + reference.crop_affine[:, 2]
    np.testing.assert_allclose(mapped, landmarks[:, :2], atol=1e-3)
    x0, y0, x1, y1 = reference.face_box
    assert x0 < reference.landmarks_image[1, 0] < x1 and y0 < reference.landmarks_image[1, 1] < y1
    # Foreground: the face is person, the top corners (wall) are not.
    mask = reference.mask
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert mask[landmarks[:468, 1].astype(int), landmarks[:468, 0].astype(int)].mean() > 0.95
    assert mask[:20, :20].mean() < 0.1 and mask[:20, -20:].mean() < 0.1


def test_astronaut_camera(reference: PortraitAnalysis) -> None:
    assert reference.K[0, 0] == pytest.approx(128 / math.tan(math.radians(10)), rel=1e-5)
    np.testing.assert_allclose(reference.K[:2, 2], [128, 128])
    view = reference.viewmat.astype(np.float64)
    np.testing.assert_allclose(view[3], [0, 0, 0, 1])
    np.testing.assert_allclose(view[:3, :3] @ view[:3, :3].T, np.eye(3), atol=1e-5)
    assert np.linalg.det(view[:3, :3]) == pytest.approx(1.0, abs=1e-5)
    assert 0.5 < view[2, 3] < 1.5  # metres: a 20-degree camera frames a head from about 0.85 m
    assert reference.reprojection_error_px < 2.5  # measured 1.36 px at 256 px (same subject as the template)
    yaw, pitch, roll = reference.head_pose_deg
    assert abs(yaw) < 5 and abs(pitch) < 10 and abs(roll) < 3


def test_estimate_camera_recovers_a_known_pose() -> None:
    size, fov = 256, 20.0
    K = intrinsics_from_fov(size, fov)
    truth = np.eye(4)
    truth[:3, :3] = FRONTAL_ROTATION @ rotation(25.0, 10.0, -5.0)
    truth[:3, 3] = [0.01, -0.02, 0.9]
    world = load_template().vertices[:468].astype(np.float64)
    camera = world @ truth[:3, :3].T + truth[:3, 3]
    pixels = camera[:, :2] / camera[:, 2:] * K[0, 0] + K[:2, 2]
    K_fit, viewmat, error = estimate_camera(pixels, size, fov)
    np.testing.assert_allclose(K_fit, K)
    np.testing.assert_allclose(viewmat, truth, atol=1e-5)
    assert error < 1e-3
    np.testing.assert_allclose(head_pose_from_viewmat(viewmat), (25.0, 10.0, -5.0), atol=1e-3)
    # yaw > 0 turns the face toward the subject's left, which a viewer sees on the right.
    origin = truth[:3, 3]
    assert pixels[1, 0] > origin[0] / origin[2] * K[0, 0] + K[0, 2] + 10


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_warp_to_crop_pixel_convention(scale: float) -> None:
    ramp = np.tile((4 * np.arange(64)).astype(np.uint8)[None, :, None], (64, 1, 3))  # value = 4 x pixel index
    affine = np.array([[scale, 0.0, 3.0], [0.0, scale, 0.0]])
    crop = warp_to_crop(ramp, affine, 32) * 255.0
    u = np.arange(32)
    source_index = ((u + 0.5) - 3.0) / scale - 0.5  # crop pixel centre -> image pixel index
    inside = (source_index > 1) & (source_index < 62)
    np.testing.assert_allclose(crop[16, inside, 0], 4 * source_index[inside], atol=0.8)


def test_load_image_conversions(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = [0, 128, 255, 255]
    loaded = load_image(rgba)
    assert loaded.shape == (4, 4, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[0, :, 0], [255, 127, 0, 0])  # composited on white
    np.testing.assert_array_equal(load_image(np.full((2, 3), 257 * 7, np.uint16)), np.full((2, 3, 3), 7))
    np.testing.assert_array_equal(load_image(np.full((2, 2, 1), 0.5, np.float32)), np.full((2, 2, 3), 128))
    Image.fromarray(np.full((3, 5), 65535, np.uint16)).save(tmp_path / "white16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "white16.png"), np.full((3, 5, 3), 255))
    for bad in (np.full((2, 2, 3), 255.0), np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2), np.int64)):
        with pytest.raises(UnreadableImageError, match="<array>"):
            load_image(bad)


def test_file_formats_give_the_same_landmarks(
    reference: PortraitAnalysis, astronaut: np.ndarray, tmp_path: Path
) -> None:
    gray = Image.fromarray(astronaut).convert("L")
    gray.save(tmp_path / "gray.png")
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:40, :, 3] = 0  # a transparent band at the top
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "rgb16.png"), astronaut[:, :, ::-1].astype(np.uint16) * 257)
    orientation = Image.Exif()
    orientation[0x0112] = 6  # stored turned 90 degrees counter-clockwise; display turns it back
    Image.fromarray(np.rot90(astronaut).copy()).save(tmp_path / "exif.jpg", exif=orientation.tobytes(), quality=95)
    for name in ("gray.png", "gray16.png", "rgba.png", "rgb16.png", "exif.jpg"):
        result = analyze_portrait(tmp_path / name)
        assert result.source == str(tmp_path / name)
        assert result.image.shape == astronaut.shape, name
        error = np.abs(result.landmarks[:, :2] - reference.landmarks[:, :2])
        assert error.mean() < 1.0 and error.max() < 4.0, name  # crop px at 256 (measured < 0.7 and < 2.3)
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png")[:40], 255)  # transparent -> white


def test_no_face(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="<array>: no face found"):
        analyze_portrait(noise)
    Image.fromarray(np.full((200, 300), 128, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(NoFaceError, match=r"blank\.png: no face found in the 300x200 image"):
        analyze_portrait(tmp_path / "blank.png")


def test_face_too_small(astronaut: np.ndarray) -> None:
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)  # face box about 52 px wide
    with pytest.raises(FaceTooSmallError, match=r"the face is 5\d px wide; at least 64 px is needed"):
        analyze_portrait(small)
    assert analyze_portrait(small, min_face_px=40).face_box[2] < 256  # the bar is configurable


def test_several_faces(astronaut: np.ndarray) -> None:
    smaller = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 512 + 384, 3), 255, np.uint8)
    canvas[:, :512] = astronaut
    canvas[64:448, 512:] = smaller
    with pytest.warns(MultipleFacesWarning, match="2 faces found; analysing the largest .* pass face_index=1"):
        largest = analyze_portrait(canvas)
    assert largest.num_faces == 2 and largest.face_index == 0 and largest.face_box[2] < 512
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # choosing explicitly does not warn
        other = analyze_portrait(canvas, face_index=1)
    assert other.face_index == 1 and other.face_box[0] > 512
    assert other.landmarks_image[:, 0].min() > 512
    assert other.reprojection_error_px < 2.5
    with pytest.raises(FaceIndexError, match=r"face_index=2, but 2 face\(s\) were found — pass 0\.\.1"):
        analyze_portrait(canvas, face_index=2)


def test_unreadable_inputs(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(UnreadableImageError, match=r"missing\.jpg: no such file"):
        analyze_portrait(missing)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(UnreadableImageError, match=r"corrupt\.jpg: not a readable image"):
        analyze_portrait(corrupt)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(skimage.data.astronaut()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(UnreadableImageError, match=r"truncated\.png"):
        load_image(truncated)


def test_one_landmarker_over_many_frames_gives_what_fresh_graphs_give(astronaut: np.ndarray) -> None:
    """detect_landmarks keeps one set of mediapipe graphs for every frame: each frame's landmarks must equal, to
    the bit, those analyze_portrait finds with graphs built for it alone; NaN where that finds no face."""
    import torch

    from vasa3d.teachers.evaluation import detect_landmarks

    side = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    shifted = np.roll(side, (9, -13), axis=(0, 1))
    turned = cv2.warpAffine(side, cv2.getRotationMatrix2D((128, 128), 12, 1.1), (256, 256),
                            borderMode=cv2.BORDER_REFLECT)
    blank = np.full_like(side, 127)
    images = [side, blank, turned, side[:, ::-1].copy(), shifted]  # the blank frame in the middle of the run
    frames = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    found = detect_landmarks(frames, min_face_px=32).numpy()
    for image, landmarks in zip(images, found):
        try:
            expected = analyze_portrait(image, crop_size=128, min_face_px=32).landmarks_image
        except NoFaceError:
            assert np.isnan(landmarks).all()
            continue
        assert np.array_equal(landmarks, expected.astype(np.float32))
    assert np.isnan(found[1]).all() and not np.isnan(found[[0, 2, 3, 4]]).any()
