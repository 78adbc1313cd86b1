"""FID and KID between two image sets (torchmetrics), with Inception-v3 weights from a configured file.

Images are ``[N, 3, H, W]`` float tensors in ``[0, 1]``. No package here ships the FID Inception
weights (torchmetrics, torch-fidelity, pytorch-fid and clean-fid all download them), so they are read
from a local file:

- torch-fidelity's / pytorch-fid's ``pt_inception-2015-12-05-*.pth`` state dict (needs the
  ``torch-fidelity`` package, which torchmetrics uses for its Inception), or
- the TorchScript ``inception-2015-12-05.pt`` of StyleGAN2-ADA/StyleGAN3 (called with
  ``return_features=True``; needs no extra package).

Without either the result is "not measured" with the reason.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from vasa3d.metrics import MetricResult, MetricUnavailable, weights_file

INCEPTION_WEIGHTS_ENV = "VASA3D_INCEPTION_WEIGHTS"


class _TorchScriptInception(nn.Module):
    """StyleGAN's TorchScript Inception: uint8 ``[N, 3, H, W]`` -> pool3 features ``[N, 2048]``."""

    num_features = 2048

    def __init__(self, detector: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.detector = detector

    @torch.no_grad()
    def forward(self, images_uint8: Tensor) -> Tensor:
        return self.detector(images_uint8, return_features=True)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def load_inception(weights_path: str | os.PathLike | None = None) -> nn.Module:
    """The FID Inception-v3 as a module: uint8 ``[N, 3, H, W]`` in ``[0, 255]`` -> ``[N, 2048]`` features.

    Args:
        weights_path: the weights file; None reads ``$VASA3D_INCEPTION_WEIGHTS``.

    Raises:
        MetricUnavailable: no path, no such file, or a ``.pth`` file without torch-fidelity installed.
    """
    path = weights_file(weights_path, INCEPTION_WEIGHTS_ENV, "Inception weights", "pass inception_weights")
    if _is_torchscript(path):
        return _TorchScriptInception(torch.jit.load(str(path), map_location="cpu")).eval()
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        import torch_fidelity  # noqa: F401  (NoTrainInceptionV3 is built on it)
    except ImportError:
        raise MetricUnavailable(
            f"{path.name} is a torch-fidelity state dict but torch-fidelity is not installed "
            "(pip install torch-fidelity, or give StyleGAN's TorchScript inception-2015-12-05.pt)"
        ) from None
    module = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
    )
    module.num_features = 2048
    return module


def _to_uint8(images: Tensor) -> Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] in [0, 1]; got {tuple(images.shape)}")
    return (images.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def fid_kid(
    real: Tensor,
    fake: Tensor,
    inception_weights: str | os.PathLike | None = None,
    feature_extractor: nn.Module | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    batch_size: int = 32,
) -> dict[str, MetricResult]:
    """FID and KID (mean, with its std in ``extra``) between a real and a generated set.

    Args:
        real: reference images ``[N, 3, H, W]`` in ``[0, 1]``; N >= 2.
        fake: generated images ``[M, 3, H, W]`` in ``[0, 1]``; M >= 2.
        inception_weights: Inception weights file (see the module docstring); None reads the env var.
        feature_extractor: instead of Inception, a module mapping uint8 ``[N, 3, H, W]`` to ``[N, D]``.
            The numbers are only FID/KID if this *is* the FID Inception; the tests use it to check the
            statistics with a tiny network.
        kid_subsets: number of random subsets KID averages over.
        kid_subset_size: KID subset size, lowered to ``min(N, M)`` for small sets (the reduced size
            is reported in ``extra``; KID from tiny subsets is noisy, FID from tiny sets biased).
        batch_size: images per feature-extractor call.

    Returns:
        ``{"fid": MetricResult, "kid": MetricResult}``; both "not measured" with the reason when the
        Inception weights are unavailable.
    """
    if feature_extractor is None:
        try:
            feature_extractor = load_inception(inception_weights)
        except MetricUnavailable as error:
            return {"fid": MetricResult.not_measured(error.reason), "kid": MetricResult.not_measured(error.reason)}
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n_real, n_fake = real.shape[0], fake.shape[0]
    if min(n_real, n_fake) < 2:
        reason = f"needs at least 2 images per set; got {n_real} real and {n_fake} generated"
        return {"fid": MetricResult.not_measured(reason), "kid": MetricResult.not_measured(reason)}
    subset_size = min(kid_subset_size, n_real, n_fake)
    feature_extractor = feature_extractor.eval()
    fid = FrechetInceptionDistance(feature=feature_extractor, normalize=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features")  # sets here are small
        kid = KernelInceptionDistance(feature=feature_extractor, subsets=kid_subsets, subset_size=subset_size)
    with torch.no_grad():
        for is_real, images in ((True, real), (False, fake)):
            for start in range(0, images.shape[0], batch_size):
                batch = _to_uint8(images[start : start + batch_size])
                fid.update(batch, real=is_real)
                kid.update(batch, real=is_real)
        fid_value = float(fid.compute())
        kid_mean, kid_std = kid.compute()
    sizes = {"n_real": n_real, "n_fake": n_fake}
    return {
        "fid": MetricResult(fid_value, extra=sizes),
        "kid": MetricResult(float(kid_mean), extra={**sizes, "std": float(kid_std), "subset_size": subset_size}),
    }
