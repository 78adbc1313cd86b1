"""Per-image quality: PSNR (optionally masked), SSIM (optionally masked), LPIPS from a configured backbone.

All images are ``[B, 3, H, W]`` float tensors in ``[0, 1]``; masks are ``[B, 1, H, W]`` or
``[B, H, W]`` with 1 where a pixel counts (soft weights allowed). Functions return one value per
image, ``[B]``; average them for a table.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from vasa3d.metrics import MetricResult, MetricUnavailable, weights_file

LPIPS_BACKBONE_ENV = "VASA3D_LPIPS_BACKBONE"


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"images must both be [B, 3, H, W] in [0, 1]; got pred {tuple(pred.shape)} and target "
            f"{tuple(target.shape)} — permute channels-last arrays with .permute(0, 3, 1, 2)"
        )


def _mask_weights(mask: Tensor, like: Tensor) -> Tensor:
    """A mask as ``[B, 1, H, W]`` float weights matching ``like`` ``[B, C, H, W]``."""
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != like.shape[0] or mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"mask must be [B, 1, H, W] or [B, H, W] matching images {tuple(like.shape)}; got {tuple(mask.shape)}")
    return mask.to(like.dtype)


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per image, ``[B]``; ``inf`` where the images are identical.

    Args:
        pred: rendered images ``[B, 3, H, W]`` in ``[0, 1]``.
        target: reference images ``[B, 3, H, W]`` in ``[0, 1]``.
        mask: optional ``[B, 1, H, W]``/``[B, H, W]``; the MSE is then the mean over mask pixels
            (weighted by the mask, all three channels), so the background does not inflate the score.
        data_range: the value range of the images (1 for ``[0, 1]``).
    """
    _check_pair(pred, target)
    pred, target = pred.float(), target.float()
    if mask is None:
        return peak_signal_noise_ratio(pred, target, data_range=data_range, reduction="none", dim=(1, 2, 3))
    weights = _mask_weights(mask, pred)
    area = weights.sum(dim=(1, 2, 3)) * pred.shape[1]
    if (area <= 0).any():
        raise ValueError("psnr: a mask is empty; every image needs at least one masked-in pixel")
    mse = ((pred - target) ** 2 * weights).sum(dim=(1, 2, 3)) / area
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """SSIM per image, ``[B]`` (Gaussian window 11, sigma 1.5, torchmetrics); 1 for identical images.

    Args:
        pred: ``[B, 3, H, W]`` in ``[0, 1]``.
        target: ``[B, 3, H, W]`` in ``[0, 1]``.
        mask: optional; the SSIM map is averaged over mask pixels instead of the whole image
            (the window still sees pixels up to 5 px outside the mask).
        data_range: the value range of the images.
    """
    _check_pair(pred, target)
    pred, target = pred.float(), target.float()
    if mask is None:
        return structural_similarity_index_measure(pred, target, data_range=data_range, reduction="none")
    weights = _mask_weights(mask, pred)
    _, ssim_map = structural_similarity_index_measure(
        pred, target, data_range=data_range, reduction="none", return_full_image=True
    )
    # torchmetrics reflect-pads the images, so the map is [B, 3, H, W] and its plain mean is the SSIM:
    # an all-ones mask gives exactly the unmasked value.
    area = weights.sum(dim=(1, 2, 3)) * ssim_map.shape[1]
    if (area <= 0).any():
        raise ValueError("ssim: a mask is empty; every image needs at least one masked-in pixel")
    return (ssim_map * weights).sum(dim=(1, 2, 3)) / area


class LPIPS(torch.nn.Module):
    """LPIPS distance (Zhang et al. 2018, v0.1) with the backbone loaded from a local file.

    The ``lpips`` package ships its linear heads; the backbone (torchvision's ImageNet AlexNet,
    VGG16 or SqueezeNet 1.1) would download, so it is read from ``backbone_path`` instead:
    a torchvision state dict (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``,
    ``squeezenet1_1-b8a52dc0.pth``), or one already in lpips' ``slice*`` layout.

    Raises:
        MetricUnavailable: no path given (argument or ``$VASA3D_LPIPS_BACKBONE``) or no such file.
        ValueError: the file does not hold the ``net`` backbone.
    """

    def __init__(self, backbone_path: str | os.PathLike | None = None, net: str = "alex") -> None:
        super().__init__()
        path = weights_file(backbone_path, LPIPS_BACKBONE_ENV, f"LPIPS {net} backbone weights", "pass backbone_path")
        import lpips

        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # torchvision's deprecation notes on `pretrained=`
            # pnet_rand=True: build the backbone without torchvision's download; heads from the package.
            self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        _load_backbone(self.model.net, torch.load(path, map_location="cpu", weights_only=True), path, net)
        self.model.eval().requires_grad_(False)
        self.net = net

    @torch.no_grad()
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """LPIPS per image ``[B]`` between ``[B, 3, H, W]`` images in ``[0, 1]`` (lower is more similar)."""
        _check_pair(pred, target)
        return self.model(pred.float(), target.float(), normalize=True).flatten()


def _load_backbone(backbone: torch.nn.Module, state: dict, path: Path, net: str) -> None:
    """Copy a torchvision ``features.<i>.*`` (or lpips ``slice<k>.<i>.*``) state dict into lpips' slices."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    by_index = {}
    for key, value in state.items():
        match = re.search(r"(?:features|slice\d+)\.(\d+)\.(.+)$", key)
        if match:
            by_index[f"{match.group(1)}.{match.group(2)}"] = value
    target = backbone.state_dict()
    loaded = {}
    for key in target:
        _, index, rest = key.split(".", 2)
        source = by_index.get(f"{index}.{rest}")
        if source is None or source.shape != target[key].shape:
            raise ValueError(
                f"{path}: not a torchvision {net} state dict — missing or mis-shaped 'features.{index}.{rest}' "
                f"(expected shape {tuple(target[key].shape)})"
            )
        loaded[key] = source
    backbone.load_state_dict(loaded)


def lpips_distance(
    pred: Tensor, target: Tensor, backbone_path: str | os.PathLike | None = None, net: str = "alex"
) -> MetricResult:
    """Mean LPIPS over the batch, or "not measured" with the reason when the backbone is unavailable."""
    try:
        metric = LPIPS(backbone_path, net=net)
    except MetricUnavailable as error:
        return MetricResult.not_measured(error.reason)
    values = metric(pred, target)
    return MetricResult(float(values.mean()), extra={"per_image": values.tolist(), "net": net})


def image_metrics(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, lpips_backbone: str | os.PathLike | None = None
) -> dict[str, MetricResult]:
    """PSNR, SSIM (both masked when ``mask`` is given) and LPIPS, averaged over the batch."""
    out = {
        "psnr": MetricResult(float(psnr(pred, target, mask).mean())),
        "ssim": MetricResult(float(ssim(pred, target, mask).mean())),
        "lpips": lpips_distance(pred, target, lpips_backbone),
    }
    return out
