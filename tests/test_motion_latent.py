"""MotionLatent: shapes, rotations, interpolation and file round trips."""

import math

import pytest
import torch

from vasa3d.motion import MotionLatent, axis_angle_to_matrix, matrix_to_axis_angle


def _latent(*shape, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pose = torch.cat([torch.randn(*shape, 3, generator=gen) * 0.5, torch.randn(*shape, 3, generator=gen) * 0.01], -1)
    return MotionLatent(torch.randn(*shape, dim, generator=gen), pose, torch.randn(*shape, 2, generator=gen),
                        torch.rand(*shape, 2, generator=gen))


def test_axis_angle_round_trip_and_orthonormality():
    aa = torch.randn(500, 3, dtype=torch.float64)
    aa = aa / aa.norm(dim=-1, keepdim=True) * torch.rand(500, 1, dtype=torch.float64) * 3.0
    rot = axis_angle_to_matrix(aa)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(500, 3, 3))
    torch.testing.assert_close(matrix_to_axis_angle(rot), aa)
    quarter = axis_angle_to_matrix(torch.tensor([0.0, math.pi / 2, 0.0]))
    torch.testing.assert_close(quarter @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]),
                               atol=1e-6, rtol=0)


def test_indexing_stacking_and_validation():
    lat = _latent(4, 10)
    assert lat.batch_shape == (4, 10) and lat.dim == 8 and len(lat) == 4
    assert lat[1].batch_shape == (10,) and lat[:, 2:5].batch_shape == (4, 3)
    joined = MotionLatent.cat([lat[0], lat[1]])
    torch.testing.assert_close(joined.dyn, lat.dyn[:2].reshape(20, 8))
    assert MotionLatent.stack([lat[0], lat[1]]).batch_shape == (2, 10)
    with pytest.raises(ValueError, match="pose"):
        MotionLatent(torch.zeros(3, 8), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="missing"):
        MotionLatent.cat([lat[0], MotionLatent(lat.dyn[1], lat.pose[1])])


def test_interpolation_endpoints_and_rotation_midpoint():
    a, b = _latent(5, seed=1), _latent(5, seed=2)
    for w, ref in ((0.0, a), (1.0, b)):
        mixed = a.interpolate(b, w)
        torch.testing.assert_close(mixed.dyn, ref.dyn)
        torch.testing.assert_close(mixed.rotation, ref.rotation, atol=1e-5, rtol=0)
    yaw0 = MotionLatent(torch.zeros(1), torch.tensor([0.0, 0.2, 0.0, 0, 0, 0]))
    yaw1 = MotionLatent(torch.zeros(1), torch.tensor([0.0, 0.8, 0.0, 0, 0, 0]))
    torch.testing.assert_close(yaw0.interpolate(yaw1, 0.5).pose[:3], torch.tensor([0.0, 0.5, 0.0]), atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path):
    lat = _latent(7)
    path = lat.save(tmp_path / "clip.npz")
    back = MotionLatent.load(path)
    for name in ("dyn", "pose", "gaze", "blink"):
        torch.testing.assert_close(getattr(back, name), getattr(lat, name))
    minimal = MotionLatent(lat.dyn, lat.pose)
    assert MotionLatent.load(minimal.save(tmp_path / "min.npz")).gaze is None
    with pytest.raises(FileNotFoundError):
        MotionLatent.load(tmp_path / "missing.npz")


def test_camera_extrinsics_move_the_head():
    viewmat = torch.eye(4)
    viewmat[2, 3] = 1.0
    lat = MotionLatent(torch.zeros(4), torch.tensor([0.0, 0.0, 0.0, 0.01, 0.0, 0.0]))
    point = torch.tensor([0.0, 0.0, 0.1, 1.0])
    moved = lat.camera_extrinsics(viewmat) @ point
    torch.testing.assert_close(moved[:3], torch.tensor([0.01, 0.0, 1.1]))
