"""Compiled C++ compositing of projected 2D Gaussians on the CPU, with a hand-written backward.

Same rules and outputs as :func:`vasa3d.gaussians.composite.composite_torch` (tested
against it), several times faster and with memory that does not grow with the number
of Gaussian-pixel pairs. The kernel (``csrc/composite.cpp``) is compiled with
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

__all__ = ["composite_cpp", "is_available", "load", "build_dir"]

_NAME = "vasa3d_composite"
_SOURCE = Path(__file__).with_name("csrc") / "composite.cpp"
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
    for part in (_SOURCE.read_bytes(), repr((_CFLAGS, _LDFLAGS)).encode(), torch.__version__.encode(),
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
            if hasattr(torch.ops, _NAME) and hasattr(getattr(torch.ops, _NAME), "forward"):
                _state["ok"] = True  # already registered in this process
                return True
            directory = build_dir()
            library = directory / f"{_NAME}.so"
            if library.is_file():
                torch.ops.load_library(str(library))
            else:
                _build(directory)
            torch.ops.vasa3d_composite.forward  # noqa: B018 - raises if the ops are missing
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
    load_extension(name=_NAME, sources=[str(_SOURCE)], extra_cflags=list(_CFLAGS), extra_ldflags=list(_LDFLAGS),
                   build_directory=str(directory), is_python_module=False, verbose=False)


def is_available() -> bool:
    """Whether the compiled compositor can be used (builds it on the first call)."""
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
