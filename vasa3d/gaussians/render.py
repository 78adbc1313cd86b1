"""One rasterisation API for 3D Gaussians: gsplat on CUDA, our own kernels on the CPU.

:func:`rasterize` mirrors ``gsplat.rasterization()``: same camera model, activations,
0.3 px low-pass, 3.33-sigma radius, near/far culling and background handling, so that
a model fitted on one backend renders the same on the other.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from vasa3d.gaussians.composite import bin_gaussians, composite_torch
from vasa3d.gaussians.projection import covariance_from_quat_scale, project_gaussians

Backend = Literal["auto", "gsplat", "cpp", "torch"]


@dataclass
class RenderOutput:
    """Rendered images, channels last (``[C, H, W, ...]``, C cameras)."""

    rgb: Tensor  # [C, H, W, K] colours composited over the background
    alpha: Tensor  # [C, H, W, 1] accumulated opacity
    depth: Tensor | None  # [C, H, W, 1] expected depth (camera z), 0 where alpha is 0; None if not asked for
    info: dict[str, Any] = field(default_factory=dict)  # means2d, radii, ... for densification


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """The backend that :func:`rasterize` will use for ``backend`` on ``device``."""
    if backend == "auto":
        if device.type == "cuda":
            return "gsplat"
        from vasa3d.gaussians import composite_cpp

        return "cpp" if composite_cpp.is_available() else "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError("backend='gsplat' needs CUDA tensors; use 'auto', 'cpp' or 'torch' on the CPU")
    if backend in ("cpp", "torch") and device.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on the CPU only; got tensors on {device}")
    return backend


def rasterize(
    means: Tensor,  # [N, 3] world positions
    quats: Tensor,  # [N, 4] (w, x, y, z), need not be normalised
    scales: Tensor,  # [N, 3] activated (positive) scales
    opacities: Tensor,  # [N] activated opacities in [0, 1]
    colors: Tensor,  # [N, K] activated colours (any K)
    viewmats: Tensor,  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [C, 3, 3] pinhole intrinsics in px
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    backgrounds: Tensor | None = None,  # [C, K] or [K]
    tile_size: int = 16,
    backend: Backend = "auto",
    depth: bool = True,
) -> RenderOutput:
    """Render N Gaussians into C cameras; returns colours, alpha and expected depth (``depth=False``: no depth,
    ``RenderOutput.depth`` is None, and the CPU training path composites one channel fewer).

    ``backend="auto"`` uses gsplat on CUDA and, on the CPU, the compiled C++ kernel
    (built on first use) or, if it cannot be built, the pure-torch reference.
    ``info["means2d"]`` (``[C, N, 2]``, requires grad) and ``info["radii"]`` feed
    ``gsplat.strategy.DefaultStrategy``; on the CPU ``info["stage_ms"]`` holds the time spent in
    projection, binning and compositing.

    On the CPU without autograd (``torch.no_grad()``/``inference_mode()`` or no input requiring
    grad) the C++ backend runs one fused forward-only call for all cameras; with autograd it
    projects (C++, hand-written backward; torch when the cameras need gradients), bins in C++ and
    composites with the C++ kernel and its backward.
    """
    n = means.shape[0]
    for name, tensor, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"rasterize: {name} has shape {tuple(tensor.shape)}, expected {shape} for {n} Gaussians")
    if colors.dim() != 2 or colors.shape[0] != n:
        raise ValueError(f"rasterize: colors has shape {tuple(colors.shape)}, expected [{n}, K]")
    n_cams = viewmats.shape[0]
    if backgrounds is not None and backgrounds.dim() == 1:
        backgrounds = backgrounds.expand(n_cams, -1)
    chosen = resolve_backend(backend, means.device)
    if chosen == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                 near_plane, far_plane, eps2d, radius_clip, backgrounds, tile_size, depth)

    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means, quats, scales, opacities, colors, viewmats, Ks))
    if chosen == "cpp" and not needs_grad:
        out = _rasterize_cpp_forward(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                     near_plane, far_plane, eps2d, radius_clip, backgrounds, tile_size)
        return out if depth else RenderOutput(out.rgb, out.alpha, None, out.info)

    clock = time.perf_counter()
    if chosen == "cpp" and not (viewmats.requires_grad or Ks.requires_grad):
        from vasa3d.gaussians import composite_cpp

        means2d, conics, depths, radii = composite_cpp.project_cpp(
            means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip)
    else:
        covars = covariance_from_quat_scale(quats, scales)
        proj = project_gaussians(means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip)
        means2d, conics, depths, radii = proj.means2d, proj.conics, proj.depths, proj.radii
    if means2d.requires_grad:
        means2d.retain_grad()
    features = colors[None].expand(n_cams, -1, -1)
    if depth:
        features = torch.cat([features, depths[..., None]], dim=-1)
    stage_ms = {"projection": 1e3 * (time.perf_counter() - clock), "binning": 0.0, "compositing": 0.0}
    rendered, alphas = [], []
    for cam in range(n_cams):
        clock = time.perf_counter()
        if chosen == "cpp":
            from vasa3d.gaussians import composite_cpp

            bins = composite_cpp.bin_gaussians_cpp(means2d[cam], radii[cam], depths[cam], width, height, tile_size,
                                                   conics=conics[cam], opacities=opacities)
            stage_ms["binning"] += 1e3 * (time.perf_counter() - clock)
            clock = time.perf_counter()
            img, acc = composite_cpp.composite_cpp(means2d[cam], conics[cam], opacities, features[cam], bins, width,
                                                   height)
        else:
            bins = bin_gaussians(means2d[cam], radii[cam], depths[cam], width, height, tile_size)
            stage_ms["binning"] += 1e3 * (time.perf_counter() - clock)
            clock = time.perf_counter()
            img, acc = composite_torch(means2d[cam], conics[cam], opacities, features[cam], bins, width, height)
        stage_ms["compositing"] += 1e3 * (time.perf_counter() - clock)
        rendered.append(img)
        alphas.append(acc)
    rendered, alpha = torch.stack(rendered), torch.stack(alphas)
    rgb, depth_sum = (rendered[..., :-1], rendered[..., -1:]) if depth else (rendered, None)
    if backgrounds is not None:
        rgb = rgb + (1.0 - alpha) * backgrounds[:, None, None, :]
    expected_depth = depth_sum / alpha.clamp(min=1e-10) if depth else None
    info = {"means2d": means2d, "radii": radii, "depths": depths, "conics": conics,
            "width": width, "height": height, "n_cameras": n_cams, "gaussian_ids": None,
            "tile_size": tile_size, "backend": chosen, "stage_ms": stage_ms}
    return RenderOutput(rgb, alpha, expected_depth, info)


def _rasterize_cpp_forward(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                           near_plane, far_plane, eps2d, radius_clip, backgrounds, tile_size) -> RenderOutput:
    """Inference: projection, binning and compositing fused in one C++ call over all cameras, no autograd.

    Gaussians whose opacity is below the compositor's 1/255 cut-off are culled before binning
    (they could not change a pixel); the image equals the autograd path's to float rounding.
    """
    from vasa3d.gaussians import composite_cpp
    from vasa3d.gaussians.composite import ALPHA_MIN

    out = composite_cpp.render_forward_cpp(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds=backgrounds,
        tile_size=tile_size, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
        min_opacity=ALPHA_MIN)
    projection_ms, binning_ms, compositing_ms = out["stage_ms"].tolist()
    info = {"means2d": out["means2d"], "radii": out["radii"], "depths": out["depths"], "conics": out["conics"],
            "width": width, "height": height, "n_cameras": viewmats.shape[0], "gaussian_ids": None,
            "tile_size": tile_size, "backend": "cpp",
            "stage_ms": {"projection": projection_ms, "binning": binning_ms, "compositing": compositing_ms}}
    return RenderOutput(out["rgb"], out["alpha"], out["depth"], info)


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                      near_plane, far_plane, eps2d, radius_clip, backgrounds, tile_size, depth=True) -> RenderOutput:
    import gsplat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rendered, alpha, meta = gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
            backgrounds=backgrounds, render_mode="RGB+ED" if depth else "RGB", tile_size=tile_size, packed=False,
        )
    meta["backend"] = "gsplat"
    if not depth:
        return RenderOutput(rendered, alpha, None, meta)
    return RenderOutput(rendered[..., :-1], alpha, rendered[..., -1:], meta)
