"""Compiled C++ rendering of 3D Gaussians on the CPU: compositing with a hand-written backward,
projection with a hand-written backward, binning, and a fused forward-only renderer.

- :func:`composite_cpp`: same rules and outputs as :func:`vasa3d.gaussians.composite.composite_torch`
  (tested against it), several times faster and with memory that does not grow with the number
  of Gaussian-pixel pairs (``csrc/composite.cpp``, tile kernels in ``csrc/tiles.h``).
- :func:`project_cpp`: :func:`vasa3d.gaussians.projection.project_gaussians` of the quaternion/scale
  covariance, with its gradients to means, quats and scales (``csrc/render.cpp``).
- :func:`bin_gaussians_cpp`: :func:`vasa3d.gaussians.composite.bin_gaussians` as a counting sort.
- :func:`render_forward_cpp`: inference, projection + binning + compositing in one call over all
  cameras, no autograd, Gaussians below the 1/255 opacity cut-off culled before binning.
- ``torch.ops.vasa3d_composite.avatar_forward`` (``csrc/avatar.cpp``): the world Gaussians of a
  mesh-bound head for inference, used by :class:`vasa3d.gaussians.avatar.GaussianAvatar`.
- :func:`ssim_map_cpp` (``csrc/ssim.cpp``): :func:`vasa3d.losses.rendering.ssim_map` with a hand-written
  backward to the render, for the D-SSIM loss of every fitting step.

The training path of :func:`vasa3d.gaussians.render.rasterize` chains the first three; without
autograd it calls the last. The kernels are compiled with
``torch.utils.cpp_extension`` on first use into a cache directory,
``~/.cache/vasa3d/torch_extensions/<hash>`` by default (``VASA3D_EXT_DIR`` overrides the
parent folder); the hash covers the source, the flags, the torch and Python versions and
the CPU, so a cached build is simply loaded. ``VASA3D_DISABLE_CPP=1`` turns the path off.
If the build fails, :func:`is_available` returns ``False`` and a warning says why;
:func:`vasa3d.gaussians.render.rasterize` then falls back to the pure-torch compositor.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from vasa3d.gaussians.composite import TileBins

__all__ = ["composite_cpp", "bin_gaussians_cpp", "project_cpp", "render_forward_cpp", "ssim_map_cpp", "is_available",
           "cpu_ready", "load", "build_dir"]

_NAME = "vasa3d_composite"
_SOURCE = Path(__file__).with_name("csrc") / "composite.cpp"
_EXTRA_SOURCES = tuple(Path(__file__).with_name("csrc") / name  # projection, binning, fused forward; the avatar
                       for name in ("render.cpp", "avatar.cpp", "ssim.cpp"))
_HEADERS = tuple(Path(__file__).with_name("csrc") / name for name in ("tiles.h", "projection.h"))
_CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-DNDEBUG")
_LDFLAGS = ("-fopenmp",)

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "ok": False, "error": None}


def _cpu_signature() -> str:
    """Model name and feature flags of this CPU (the build uses ``-march=native``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(keep))


def build_dir() -> Path:
    """Cache directory of the build for this source, these flags, torch, Python and CPU."""
    root = os.environ.get("VASA3D_EXT_DIR") or Path.home() / ".cache" / "vasa3d" / "torch_extensions"
    key = hashlib.sha256()
    sources = [p.read_bytes() for p in (_SOURCE, *_EXTRA_SOURCES, *_HEADERS)]
    for part in (*sources, repr((_CFLAGS, _LDFLAGS)).encode(), torch.__version__.encode(),
                 sys.version.encode(), platform.machine().encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return Path(root) / f"{_NAME}-{key.hexdigest()[:16]}"


def load() -> bool:
    """Build (first use, ~30 s) or load the extension; ``True`` when its ops are registered."""
    with _lock:
        if _state["tried"]:
            return _state["ok"]
        _state["tried"] = True
        if os.environ.get("VASA3D_DISABLE_CPP", "") not in ("", "0"):
            _state["error"] = "disabled by VASA3D_DISABLE_CPP"
            return False
        try:
            if hasattr(torch.ops, _NAME) and hasattr(getattr(torch.ops, _NAME), "render_forward"):
                _state["ok"] = True  # already registered in this process
                return True
            directory = build_dir()
            library = directory / f"{_NAME}.so"
            if library.is_file():
                torch.ops.load_library(str(library))
            else:
                _build(directory)
            torch.ops.vasa3d_composite.forward  # noqa: B018 - raises if the ops are missing
            torch.ops.vasa3d_composite.render_forward  # noqa: B018
            torch.ops.vasa3d_composite.avatar_forward  # noqa: B018
            torch.ops.vasa3d_composite.residual_forward  # noqa: B018
            torch.ops.vasa3d_composite.ssim_forward  # noqa: B018
            _state["ok"] = True
        except Exception as exc:  # noqa: BLE001 - any failure means "use the torch path"
            _state["error"] = f"{type(exc).__name__}: {_first_error(str(exc))}"
            warnings.warn(f"vasa3d: the C++ Gaussian compositor is unavailable ({_state['error']}; build folder "
                          f"{build_dir()}); using the slow pure-torch path instead", RuntimeWarning, stacklevel=2)
        return _state["ok"]


def _first_error(message: str) -> str:
    """The first compiler ``error:`` line of a build log, else its last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines[-1:] or ["unknown error"])[0][:300]


def _build(directory: Path) -> None:
    from torch.utils.cpp_extension import load as load_extension

    directory.mkdir(parents=True, exist_ok=True)
    print("vasa3d: compiling the CPU Gaussian compositor (first use, ~30 s)…", file=sys.stderr, flush=True)
    load_extension(name=_NAME, sources=[str(_SOURCE), *map(str, _EXTRA_SOURCES)], extra_cflags=list(_CFLAGS), extra_ldflags=list(_LDFLAGS),
                   build_directory=str(directory), is_python_module=False, verbose=False)


def is_available() -> bool:
    """Whether the compiled compositor can be used (builds it on the first call)."""
    return load()


def cpu_ready(*tensors: Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> bool:
    """Whether ``tensors`` can go through the compiled kernels: all on the CPU, all of one dtype among ``dtypes``,
    and the kernels built (the check every ``backend="auto"`` path makes before taking them)."""
    first = tensors[0]
    if first.dtype not in dtypes or any(t.device.type != "cpu" or t.dtype != first.dtype for t in tensors):
        return False
    return load()


def unavailable_reason() -> str | None:
    """Why :func:`is_available` is ``False`` (``None`` if it is available or was not tried)."""
    return _state["error"]


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
                tile_offsets: Tensor, flat_ids: Tensor, tiles_x: int, tiles_y: int, tile_size: int,
                width: int, height: int) -> tuple[Tensor, Tensor]:
        dims = (tiles_x, tiles_y, tile_size, width, height)
        out, alphas, t_final, last = torch.ops.vasa3d_composite.forward(
            means2d, conics, opacities, colors, tile_offsets, flat_ids, *dims)
        ctx.save_for_backward(means2d, conics, opacities, colors, tile_offsets, flat_ids, t_final, last)
        ctx.dims = dims
        return out, alphas

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, v_out: Tensor, v_alphas: Tensor) -> tuple[Tensor | None, ...]:
        means2d, conics, opacities, colors, tile_offsets, flat_ids, t_final, last = ctx.saved_tensors
        dtype = means2d.dtype
        v_means, v_conics, v_opac, v_colors = torch.ops.vasa3d_composite.backward(
            means2d, conics, opacities, colors, tile_offsets, flat_ids, *ctx.dims, t_final, last,
            v_out.to(dtype).contiguous(), v_alphas.to(dtype).contiguous())
        needs = ctx.needs_input_grad
        grads = (v_means, v_conics, v_opac, v_colors)
        return tuple(g if needs[i] else None for i, g in enumerate(grads)) + (None,) * 7


def composite_cpp(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N] activated, in [0, 1]
    colors: Tensor,  # [N, K] any number of channels
    bins: TileBins,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Composite front to back in C++; returns ``colors [H, W, K]`` and ``alphas [H, W, 1]``.

    Differentiable w.r.t. ``means2d``, ``conics``, ``opacities`` and ``colors`` (float32 or
    float64, all of one dtype: the others are cast to ``means2d``'s). No background is added.
    """
    if not load():
        raise RuntimeError(f"vasa3d: the C++ compositor is unavailable ({_state['error']}); "
                           "use vasa3d.gaussians.composite.composite_torch")
    dtype = means2d.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"composite_cpp: float32 or float64 expected, got {dtype}")
    means2d, conics, opacities, colors = (t.to(dtype).contiguous() for t in (means2d, conics, opacities, colors))
    return _Composite.apply(means2d, conics, opacities, colors, bins.tile_offsets.long().contiguous(),
                            bins.flat_ids.long().contiguous(), int(bins.tiles_x), int(bins.tiles_y),
                            int(bins.tile_size), int(width), int(height))


def bin_gaussians_cpp(
    means2d: Tensor,  # [N, 2]
    radii: Tensor,  # [N, 2] int, 0 = culled
    depths: Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int = 16,
    conics: Tensor | None = None,  # [N, 3]
    opacities: Tensor | None = None,  # [N]
) -> TileBins:
    """:func:`vasa3d.gaussians.composite.bin_gaussians` in C++ (a counting sort over depth-ordered
    Gaussians); the same lists in the same order.

    With ``conics`` and ``opacities``, each list keeps only the Gaussians that can reach alpha >= 1/255
    at one of the tile's pixel centres (the rest would be skipped there by the compositor): fewer
    entries, the same order, and the same composited image and gradients."""
    if not load():
        raise RuntimeError(f"vasa3d: the C++ compositor is unavailable ({_state['error']})")
    if (conics is None) != (opacities is None):
        raise ValueError("bin_gaussians_cpp: give both conics and opacities for the tile cull, or neither")
    cull = () if conics is None else (conics.detach(), opacities.detach())
    offsets, flat_ids = torch.ops.vasa3d_composite.bin(
        means2d.detach(), radii.int(), depths.detach(), int(width), int(height), int(tile_size), *cull)
    return TileBins(offsets, flat_ids, (width + tile_size - 1) // tile_size, (height + tile_size - 1) // tile_size,
                    tile_size)


def render_forward_cpp(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] (w, x, y, z)
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N, K] activated
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [C, K]
    tile_size: int = 16,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    min_opacity: float = 1.0 / 255.0,
) -> dict[str, Tensor]:
    """Projection, binning and compositing in one C++ call, forward only (no autograd), every camera.

    Returns ``rgb [C, H, W, K]`` (over ``backgrounds``), ``alpha [C, H, W, 1]``, ``depth [C, H, W, 1]``,
    ``means2d [C, N, 2]``, ``conics [C, N, 3]``, ``depths [C, N]``, ``radii [C, N, 2]`` and
    ``stage_ms [3]`` (projection, binning, compositing). Gaussians with opacity below ``min_opacity``
    are culled before binning; at the default (the compositor's 1/255 cut-off) that changes no pixel.
    """
    if not load():
        raise RuntimeError(f"vasa3d: the C++ compositor is unavailable ({_state['error']})")
    dtype = means.dtype if means.dtype in (torch.float32, torch.float64) else torch.float32
    bg = backgrounds if backgrounds is not None else means.new_zeros(0)
    out = torch.ops.vasa3d_composite.render_forward(
        means.detach(), quats.detach(), scales.detach(), opacities.detach(), colors.detach(), viewmats.detach(),
        Ks.detach(), bg.detach().to(dtype), int(width), int(height), int(tile_size), float(eps2d), float(near_plane),
        float(far_plane), float(radius_clip), float(min_opacity))
    names = ("rgb", "alpha", "depth", "means2d", "conics", "depths", "radii", "stage_ms")
    return dict(zip(names, out))


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int,
                height: int, eps2d: float, near_plane: float, far_plane: float,
                radius_clip: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        means2d, conics, depths, radii = torch.ops.vasa3d_composite.project(
            means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii)
        ctx.dims = (width, height, eps2d)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, v_means2d: Tensor, v_conics: Tensor, v_depths: Tensor, _v_radii: Tensor | None):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        width, height, eps2d = ctx.dims
        zeros = [torch.zeros(s, dtype=means.dtype) for s in ((viewmats.shape[0], means.shape[0], 2),
                                                              (viewmats.shape[0], means.shape[0], 3),
                                                              (viewmats.shape[0], means.shape[0]))]
        grads = [g if g is not None else z for g, z in zip((v_means2d, v_conics, v_depths), zeros)]
        v_means, v_quats, v_scales = torch.ops.vasa3d_composite.project_backward(
            means, quats, scales, viewmats, Ks, width, height, eps2d, radii, *grads)
        return v_means, v_quats, v_scales, None, None, None, None, None, None, None, None


def project_cpp(
    means: Tensor,  # [N, 3] world
    quats: Tensor,  # [N, 4] (w, x, y, z)
    scales: Tensor,  # [N, 3] activated
    viewmats: Tensor,  # [C, 4, 4] world-to-camera (no gradient)
    Ks: Tensor,  # [C, 3, 3] (no gradient)
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`vasa3d.gaussians.projection.project_gaussians` of ``covariance_from_quat_scale(quats, scales)``
    in C++, with a hand-written backward to means, quats and scales. Returns ``means2d [C, N, 2]``,
    ``conics [C, N, 3]``, ``depths [C, N]`` and ``radii [C, N, 2]`` (int32)."""
    if not load():
        raise RuntimeError(f"vasa3d: the C++ compositor is unavailable ({_state['error']})")
    if viewmats.requires_grad or Ks.requires_grad:
        raise ValueError("project_cpp: no gradient to cameras; use vasa3d.gaussians.projection.project_gaussians")
    dtype = means.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"project_cpp: float32 or float64 expected, got {dtype}")
    means, quats, scales, viewmats, Ks = (t.to(dtype).contiguous() for t in (means, quats, scales, viewmats, Ks))
    return _Project.apply(means, quats, scales, viewmats, Ks, int(width), int(height), float(eps2d),
                          float(near_plane), float(far_plane), float(radius_clip))


class _SSIMMap(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, render: Tensor, target: Tensor, window: Tensor) -> Tensor:
        ctx.save_for_backward(render, target, window)
        return torch.ops.vasa3d_composite.ssim_forward(render, target, window)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, v_ssim: Tensor) -> tuple[Tensor | None, None, None]:
        render, target, window = ctx.saved_tensors
        return torch.ops.vasa3d_composite.ssim_backward(render, target, window, v_ssim.contiguous()), None, None


def ssim_map_cpp(render: Tensor, target: Tensor, window: Tensor) -> Tensor:
    """Per-pixel SSIM ``[B, C, H - K + 1, W - K + 1]`` of ``render`` and ``target [B, C, H, W]`` with the separable
    window ``window [K]`` (applied along rows, then columns), in C++, differentiable in ``render`` only (the
    target is a constant: use the torch reference, :func:`vasa3d.losses.rendering.ssim_map`, for its gradient)."""
    if not load():
        raise RuntimeError(f"vasa3d: the C++ compositor is unavailable ({_state['error']})")
    if target.requires_grad and torch.is_grad_enabled():
        raise ValueError("ssim_map_cpp: no gradient to the target; use vasa3d.losses.rendering.ssim_map(backend='torch')")
    if render.dtype not in (torch.float32, torch.float64) or render.shape != target.shape or render.dim() != 4:
        raise ValueError(f"ssim_map_cpp: two float32/float64 [B, C, H, W] images of one size expected, got "
                         f"{tuple(render.shape)} {render.dtype} and {tuple(target.shape)} {target.dtype}")
    b, c, h, w = render.shape
    planes = (t.to(render.dtype).reshape(b * c, h, w).contiguous() for t in (render, target.detach()))
    out = _SSIMMap.apply(*planes, window.detach().to(render.dtype).contiguous())
    return out.reshape(b, c, *out.shape[1:])
