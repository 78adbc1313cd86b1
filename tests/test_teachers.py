"""The built-in teacher: deterministic, driven by the latent, and its frames show what it claims."""

import pytest
import torch
from skimage import data

from vasa3d.face import analyze_portrait
from vasa3d.motion.rig import CONTROL_NAMES, NUM_CONTROLS, latent_from_controls
from vasa3d.teachers import MeshLiftTeacher, Teacher


@pytest.fixture(scope="module")
def portrait():
    return analyze_portrait(data.astronaut(), crop_size=128)


@pytest.fixture(scope="module")
def teacher():
    return MeshLiftTeacher(num_gaussians=6000, identity_steps=60, refine_steps=10)


def _clip():
    controls = torch.zeros(4, NUM_CONTROLS)
    controls[1, CONTROL_NAMES.index("jaw_open")] = 1.0
    controls[2, CONTROL_NAMES.index("blink_left")] = 1.0
    controls[2, CONTROL_NAMES.index("blink_right")] = 1.0
    pose = torch.zeros(4, 6)
    pose[3, 1] = 0.5  # yaw
    return latent_from_controls(controls, pose, dim=16, gaze=torch.zeros(4, 2))


def test_teacher_follows_the_protocol_and_is_deterministic(portrait, teacher):
    assert isinstance(teacher, Teacher)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the lift's photometric refine once summed gradients in thread-timing order
    try:
        first = teacher.generate(portrait, _clip())
        again = MeshLiftTeacher(num_gaussians=6000, identity_steps=60, refine_steps=10).generate(portrait, _clip())
    finally:
        torch.set_num_threads(threads)
    assert first.frames.shape == (4, 3, 128, 128) and first.masks.shape == (4, 1, 128, 128)
    assert first.landmarks.shape == (4, 478, 2)
    assert torch.equal(first.frames, again.frames) and torch.equal(first.reliability, again.reliability)


def test_latent_drives_the_frames_and_landmarks(portrait, teacher):
    out = teacher.generate(portrait, _clip())
    neutral, jaw, blink, turned = out.frames
    lm = out.landmarks
    mouth = (slice(None), slice(75, 110), slice(45, 85))
    assert (jaw - neutral)[mouth].abs().mean() > 0.03  # the mouth opened
    assert (lm[1, 17, 1] - lm[0, 17, 1]) > 3  # lower-lip centre (landmark 17) moved down by > 3 px
    assert (blink - neutral).abs().mean() > 0.002 and (lm[2, 159, 1] - lm[0, 159, 1]) > 1  # upper lid came down
    assert (lm[3, 1, 0] - lm[0, 1, 0]).abs() > 5  # the nose tip moved sideways with the yaw
    assert (turned - neutral).abs().mean() > 0.02


def test_teacher_rejects_a_batch_of_clips(portrait, teacher):
    clip = _clip()
    with pytest.raises(ValueError, match="clip"):
        teacher.generate(portrait, type(clip).stack([clip, clip]))


def test_video_folder_teacher_reads_latents_off_recorded_frames(portrait, teacher, tmp_path):
    import cv2
    import numpy as np
    from PIL import Image

    from vasa3d.teachers.video_folder import VideoFolderTeacher

    shown = teacher.generate(portrait, _clip())
    height, width = portrait.image.shape[:2]
    to_image = cv2.invertAffineTransform(portrait.crop_affine.astype(np.float64))
    for t, frame in enumerate(shown.frames):
        crop = (frame.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(cv2.warpAffine(crop, to_image, (width, height), borderValue=(255, 255, 255))).save(
            tmp_path / f"frame_{t:04d}.png")
    video = VideoFolderTeacher(str(tmp_path), latent_dim=16)
    first = video.generate(portrait, _clip()[:2])
    second = video.generate(portrait, _clip()[:2])
    assert first.frames.shape == (2, 3, 128, 128) and len(first.latents) == 2
    jaw = CONTROL_NAMES.index("jaw_open")
    assert first.latents.dyn[1, jaw] > first.latents.dyn[0, jaw] + 0.15  # the open mouth is read off the frame
    blinks = [CONTROL_NAMES.index("blink_left"), CONTROL_NAMES.index("blink_right")]
    assert second.latents.dyn[0, blinks].max() > 0.5  # frame 2 has closed eyes
    yaw_sign = torch.sign(second.latents.pose[1, 1] - first.latents.pose[0, 1])
    assert yaw_sign == 1 and abs(float(second.latents.pose[1, 1]) - 0.5) < 0.15
    with pytest.raises(ValueError, match="cannot supply"):
        video.generate(portrait, _clip()[:2])
