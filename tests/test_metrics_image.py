"""PSNR / SSIM against analytic values; LPIPS, FID and KID report "not measured" without weights."""

import math

import pytest
import torch

from vasa3d.metrics import MetricResult, MetricUnavailable
from vasa3d.metrics.distribution import fid_kid, load_inception
from vasa3d.metrics.image import LPIPS, image_metrics, lpips_distance, psnr, ssim
from vasa3d.metrics.landmarks import inter_ocular_distance, landmark_distance, mouth_opening


def _images(batch=2, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator)


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    images = _images()
    assert torch.isinf(psnr(images, images)).all()
    assert torch.allclose(ssim(images, images), torch.ones(2), atol=1e-6)


def test_gaussian_noise_psnr_matches_the_analytic_value():
    sigma = 0.05
    target = torch.full((2, 3, 256, 256), 0.5)
    noisy = target + sigma * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    expected = 10 * math.log10(1 / sigma**2)
    assert torch.allclose(psnr(noisy, target), torch.full((2,), expected), atol=0.1)
    assert (ssim(noisy, target) < 0.99).all()


def test_masked_psnr_ignores_pixels_outside_the_mask():
    sigma = 0.05
    target = torch.full((1, 3, 128, 128), 0.5)
    pred = target + sigma * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1
    pred[..., 64:] = 1.0  # garbage outside the mask
    assert abs(float(psnr(pred, target, mask)) - 10 * math.log10(1 / sigma**2)) < 0.15
    assert float(psnr(pred, target)) < 10.0
    textured = _images(1, size=128)
    damaged = textured.clone()
    damaged[..., 64:] = 1.0 - damaged[..., 64:]
    assert float(ssim(damaged, textured, mask)) > 0.95  # the damage is outside the mask (the 11-px window bleeds)
    assert float(ssim(damaged, textured)) < 0.6
    everywhere = torch.ones(1, 1, 128, 128)
    assert float(ssim(damaged, textured, everywhere)) == pytest.approx(float(ssim(damaged, textured)), abs=1e-5)


def test_shape_errors_say_what_is_expected():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        psnr(torch.rand(2, 64, 64, 3), torch.rand(2, 64, 64, 3))


def test_lpips_without_backbone_is_not_measured_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.delenv("VASA3D_LPIPS_BACKBONE", raising=False)
    images = _images()
    result = lpips_distance(images, images)
    assert not result.measured and "not configured" in result.reason
    assert result.format().startswith("not measured (LPIPS")
    with pytest.raises(MetricUnavailable, match="not found"):
        LPIPS(tmp_path / "missing.pth")
    assert image_metrics(images, images)["lpips"].value is None


def test_lpips_loads_a_torchvision_state_dict(tmp_path):
    import torchvision

    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)  # random weights: checks the loading only
    metric = LPIPS(path)
    images = _images()
    assert torch.allclose(metric(images, images), torch.zeros(2), atol=1e-6)
    assert (metric(images, images.flip(-1)) > 0).all()
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision alex state dict"):
        LPIPS(tmp_path / "bad.pth")


def test_fid_and_kid_without_inception_are_not_measured(monkeypatch):
    monkeypatch.delenv("VASA3D_INCEPTION_WEIGHTS", raising=False)
    results = fid_kid(_images(4), _images(4, seed=1))
    assert results["fid"].value is None and "Inception weights path not configured" in results["fid"].reason
    assert results["kid"].value is None
    with pytest.raises(MetricUnavailable, match="not found"):
        load_inception("/nonexistent/pt_inception.pth")


class _PooledColour(torch.nn.Module):
    """A stand-in feature network (uint8 images -> 8 features) to check the FID/KID statistics."""

    num_features = 8

    def forward(self, images_uint8):
        images = images_uint8.float() / 255
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)[:, :8]
        return pooled.double()


def test_fid_kid_statistics_on_small_sets():
    real = _images(6, size=32)
    same = fid_kid(real, real.clone(), feature_extractor=_PooledColour(), kid_subsets=5)
    shifted = fid_kid(real, (real * 0.5).clamp(0, 1), feature_extractor=_PooledColour(), kid_subsets=5)
    assert abs(same["fid"].value) < 1e-3
    assert shifted["fid"].value > 0.05 and shifted["kid"].value > same["kid"].value
    assert shifted["kid"].extra["subset_size"] == 6  # lowered from 1000 to the set size


def test_landmark_distance_in_px_and_iod():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(5, 478, 2, generator=generator) * 100
    target[:, 33] = torch.tensor([30.0, 50.0])
    target[:, 263] = torch.tensor([70.0, 50.0])  # IOD 40 px
    pred = target + torch.tensor([3.0, 4.0])  # every point 5 px off
    result = landmark_distance(pred, target)
    assert result["lmd_px"].value == pytest.approx(5.0)
    assert result["lmd_iod"].value == pytest.approx(5.0 / 40.0)
    assert inter_ocular_distance(target) == pytest.approx([40.0] * 5)
    pred[2] = float("nan")
    assert landmark_distance(pred, target)["lmd_px"].extra["n_missing"] == 1
    assert mouth_opening(target).shape == (5,)


def test_metric_result_formats():
    assert MetricResult(31.254).format() == "31.25"
    assert MetricResult(float("inf")).format() == "inf"
    assert MetricResult.not_measured("why").format() == "not measured (why)"
    assert MetricResult.from_dict(MetricResult(float("nan"), "no face").to_dict()).format() == "nan (no face)"
