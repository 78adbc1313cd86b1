"""Wide-pose metrics: how a head holds up where the portrait never looked, without ground truth.

The head is turned through a set of yaws (neutral expression) in front of a *frontal, symmetric*
camera: the portrait camera's distance and focal length, on the head's symmetry axis, so that the
view at ``+y`` and the mirrored view at ``-y`` should agree. Per yaw:

- ``face_found``: mediapipe (our face analysis: detector, then the 478-point mesh) finds the face;
- ``identity_cos``: dlib's identity cosine of the view to the portrait (NaN where dlib finds no face);
- ``lr_psnr``: PSNR (dB) of the view against the horizontally mirrored view at the opposite yaw,
  over the pixels both cover: a half-painted, half-smeared head disagrees with its mirror (a real
  face is not exactly symmetric either, so this is a relative measure: higher is more consistent);
- ``speckle``: high-frequency energy (the image minus its Gaussian blur, σ = 1 px) in the hair,
  skull, ear and neck pixels, divided by the same measure on the frontal view: 1 = as fine-grained
  as what the portrait showed, far above 1 = speckles.

Summaries (the columns of ``vasa3d bench`` and of a fit's ``metrics.json``): ``found_45``/``found_60``
(detection rate over ±45° / ±60°), ``id_30``/``id_45``/``id_60`` (the worse side's cosine), ``lr_psnr``
(mean over the turned views), ``speckle_45``/``speckle_60`` (the worse side).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

WIDE_YAWS = (-60.0, -45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0, 60.0)
SPECKLE_REGIONS = ("skull", "ears", "neck")  # the template regions whose pixels the speckle measure looks at
SUMMARY_DIRECTIONS = {"found_45": 1, "found_60": 1, "id_30": 1, "id_45": 1, "id_60": 1, "lr_psnr": 1,
                      "speckle_45": -1, "speckle_60": -1}


def speckle_mask(binding: Tensor, template_path: str | None = None) -> Tensor:
    """``[N]`` bool: the Gaussians (``binding [N]`` triangle indices) bound to :data:`SPECKLE_REGIONS`."""
    from vasa3d.face.template import load_template

    return load_template(template_path).bound_to(binding.cpu(), *SPECKLE_REGIONS)


def frontal_camera(viewmat: Tensor, K: Tensor, size: int, zoom: float = 0.85) -> tuple[Tensor, Tensor]:
    """``(viewmat [4, 4], K [3, 3])``: a camera on the template's +z axis looking at its origin (the head
    centre), at the distance of ``viewmat``'s camera, with ``K``'s focal length rescaled to ``size`` (times
    ``zoom``: a little wider, so that hair and ears stay in frame) and the principal point at the image
    centre. Mirror-symmetric about the head's sagittal plane."""
    rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
    distance = float((-(rotation.T @ translation)).norm())
    view = torch.eye(4, dtype=viewmat.dtype, device=viewmat.device)
    view[1, 1], view[2, 2] = -1.0, -1.0  # OpenCV camera: x right, y down, looking along -z of the template
    view[2, 3] = distance
    scale = zoom * size / (2 * float(K[0, 2]))
    intrinsics = torch.zeros(3, 3, dtype=K.dtype, device=K.device)
    intrinsics[0, 0], intrinsics[1, 1] = K[0, 0] * scale, K[1, 1] * scale
    intrinsics[0, 2] = intrinsics[1, 2] = size / 2
    intrinsics[2, 2] = 1.0
    return view, intrinsics


@dataclass
class Turntable:
    """Neutral views of a head turned through ``yaws``: ``rgb [Y, 3, S, S]``, ``alpha [Y, 1, S, S]`` and
    ``speckle_region [Y, 1, S, S]`` (coverage by the Gaussians bound to :data:`SPECKLE_REGIONS`)."""

    yaws: tuple[float, ...]
    rgb: Tensor
    alpha: Tensor
    speckle_region: Tensor

    def strip(self) -> np.ndarray:
        """The views side by side, ``[S, Y * S, 3]`` uint8."""
        frames = (self.rgb.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        return np.concatenate(list(frames), axis=1)


@torch.no_grad()
def render_turntable(gaussians: dict[str, Tensor], speckle_region: Tensor, viewmat: Tensor, K: Tensor, size: int,
                     yaws: tuple[float, ...] | list[float] = WIDE_YAWS, background: Tensor | None = None,
                     backend: str = "auto") -> Turntable:
    """Render world-frame ``gaussians`` (means, quats, scales, opacities, colors) turned by each yaw (degrees)
    in front of :func:`frontal_camera` of the portrait camera ``viewmat``/``K``; ``speckle_region [N]`` marks the
    Gaussians of :data:`SPECKLE_REGIONS`."""
    from vasa3d.gaussians.render import rasterize
    from vasa3d.systems.views import yaw_viewmats

    view, intrinsics = frontal_camera(viewmat.float().cpu(), K.float().cpu(), size)
    g = {k: v.detach().float().cpu() for k, v in gaussians.items()}
    viewmats = yaw_viewmats(view, list(yaws))
    Ks = intrinsics.expand(len(yaws), 3, 3)
    background = torch.ones(3) if background is None else background.float().cpu()
    out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks, size, size,
                    backgrounds=background, backend=backend)
    indicator = speckle_region.float().cpu()[:, None].expand(-1, 3).contiguous()
    region = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], indicator, viewmats, Ks, size, size,
                       backgrounds=torch.zeros(3), backend=backend)
    return Turntable(tuple(float(y) for y in yaws), out.rgb.permute(0, 3, 1, 2).clamp(0, 1),
                     out.alpha.permute(0, 3, 1, 2), region.rgb[..., :1].permute(0, 3, 1, 2))


def high_frequency_energy(rgb: Tensor, region: Tensor, sigma: float = 1.0) -> Tensor:
    """``[Y]`` mean squared difference between ``rgb [Y, 3, S, S]`` and its Gaussian blur, over ``region [Y, 1, S, S]``."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=rgb.dtype)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    padded = F.pad(rgb, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    energy = ((rgb - blurred) ** 2).sum(1, keepdim=True)
    return (energy * region).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3)).clamp(min=1.0)


def mirror_psnr(turntable: Turntable) -> Tensor:
    """``[Y]`` PSNR of each view against the mirrored view at the opposite yaw (NaN where there is none)."""
    out = torch.full((len(turntable.yaws),), math.nan)
    index = {round(y, 3): i for i, y in enumerate(turntable.yaws)}
    for i, yaw in enumerate(turntable.yaws):
        j = index.get(round(-yaw, 3))
        if j is None or yaw == 0:
            continue
        mirrored, mirrored_alpha = turntable.rgb[j].flip(-1), turntable.alpha[j].flip(-1)
        covered = torch.minimum(turntable.alpha[i], mirrored_alpha) > 0.5
        mse = ((turntable.rgb[i] - mirrored) ** 2).mean(0, keepdim=True)[covered].mean()
        out[i] = -10 * torch.log10(mse.clamp(min=1e-10))
    return out


def wide_pose_metrics(turntable: Turntable, portrait: Tensor, embedder=None,
                      detect: Callable[[Tensor], Tensor] | None = None) -> dict:
    """Per-yaw metrics and their summaries (see the module docstring) of ``turntable`` against ``portrait
    [3, H, W]`` in [0, 1]. Returns ``{"per_yaw": [{yaw, face_found, identity_cos, lr_psnr, speckle}, ...],
    "summary": {found_45, found_60, id_30, id_45, id_60, lr_psnr, speckle_45, speckle_60}}``."""
    from vasa3d.metrics.identity import DlibFaceEmbedder, _similarities
    from vasa3d.teachers.evaluation import detect_landmarks

    embedder = embedder or DlibFaceEmbedder()
    detect = detect or detect_landmarks
    yaws = np.asarray(turntable.yaws)
    found = ~torch.isnan(detect(turntable.rgb)).flatten(1).any(1)
    reference = embedder.embed(portrait)
    if reference is None:
        cosines = [math.nan] * len(yaws)
    else:
        cosines, _ = _similarities([embedder.embed(view) for view in turntable.rgb], reference)
    lr = mirror_psnr(turntable)
    region = (turntable.speckle_region > 0.5).float() * (turntable.alpha > 0.5).float()
    energy = high_frequency_energy(turntable.rgb, region)
    frontal = int(np.argmin(np.abs(yaws)))
    speckle = energy / energy[frontal].clamp(min=1e-8)
    per_yaw = [{"yaw": float(y), "face_found": bool(found[i]), "identity_cos": float(cosines[i]),
                "lr_psnr": float(lr[i]), "speckle": float(speckle[i])} for i, y in enumerate(yaws)]

    def worst(values, at: float, lower_is_better: bool = False) -> float:
        chosen = [v for v, y in zip(values, yaws) if abs(abs(y) - at) < 1e-6]
        if not chosen:
            return math.nan
        if any(math.isnan(v) for v in chosen):  # no face on one side: the worse side is not measurable
            return math.nan
        return max(chosen) if lower_is_better else min(chosen)

    def rate(limit: float) -> float:
        within = np.abs(yaws) <= limit + 1e-6
        return float(found.numpy()[within].mean()) if within.any() else math.nan

    turned = [float(v) for v, y in zip(lr.tolist(), yaws) if y != 0 and not math.isnan(v)]
    summary = {"found_45": rate(45), "found_60": rate(60), "id_30": worst(cosines, 30), "id_45": worst(cosines, 45),
               "id_60": worst(cosines, 60), "lr_psnr": float(np.mean(turned)) if turned else math.nan,
               "speckle_45": worst(speckle.tolist(), 45, True), "speckle_60": worst(speckle.tolist(), 60, True)}
    return {"per_yaw": per_yaw, "summary": summary}


def per_yaw_markdown(metrics: dict) -> str:
    """The per-yaw rows as a small markdown table."""
    lines = ["| yaw | mediapipe finds the face | dlib identity cosine | mirror PSNR (dB) | speckle (× frontal) |",
             "|---:|:---:|---:|---:|---:|"]
    for row in metrics["per_yaw"]:
        cos = "no face" if math.isnan(row["identity_cos"]) else f"{row['identity_cos']:.3f}"
        lr = "—" if math.isnan(row["lr_psnr"]) else f"{row['lr_psnr']:.1f}"
        lines.append(f"| {row['yaw']:+.0f}° | {'yes' if row['face_found'] else 'no'} | {cos} | {lr} | {row['speckle']:.2f} |")
    return "\n".join(lines) + "\n"


def labelled_strip(turntable: Turntable, metrics: dict) -> np.ndarray:
    """:meth:`Turntable.strip` with each view's yaw, mediapipe's verdict and dlib's identity cosine written on it."""
    import cv2

    strip = np.ascontiguousarray(turntable.strip())
    size = turntable.rgb.shape[-1]
    scale = size / 256
    for i, row in enumerate(metrics["per_yaw"]):
        cos = "no face" if math.isnan(row["identity_cos"]) else f"id {row['identity_cos']:.3f}"
        found = "mp: face" if row["face_found"] else "mp: MISSED"
        for line, text in enumerate((f"{row['yaw']:+.0f} deg", found, cos)):
            org = (i * size + int(6 * scale), int((18 + 16 * line) * scale))
            cv2.putText(strip, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (255, 255, 255), 3, cv2.LINE_AA)
            cv2.putText(strip, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def summary_results(summary: dict, per_yaw: list | None = None, names=None) -> dict:
    """``{name: MetricResult}`` of a summary: an identity cosine with no face on a side is "not measured"."""
    from vasa3d.metrics import MetricResult

    extra = {"per_yaw": per_yaw} if per_yaw is not None else {}
    out = {}
    for name in names or summary:
        value = summary[name]
        out[name] = MetricResult.not_measured(f"dlib finds no face at ±{name.split('_')[1]}° on a side") \
            if math.isnan(value) else MetricResult(value, extra=extra)
    return out
