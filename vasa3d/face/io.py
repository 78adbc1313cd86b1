"""Load any common portrait image, or an image array, as HxWx3 uint8 RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vasa3d.face.errors import UnreadableImageError

ImageInput = str | os.PathLike | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def describe_source(image_or_path: ImageInput) -> str:
    """Return the name used for ``image_or_path`` in messages: the path as given, or "<array>"."""
    return "<array>" if isinstance(image_or_path, np.ndarray) else os.fspath(image_or_path)


def load_image(image_or_path: ImageInput) -> np.ndarray:
    """Load a portrait as a [H, W, 3] uint8 RGB array (a new array; the input is never modified).

    Files go through PIL with the EXIF orientation applied. Transparent images (RGBA, LA,
    palette with transparency) are composited on white, so transparent pixels read as a
    plain white background. 16-bit images are scaled to 8 bits (65535 -> 255), grayscale
    is repeated into three channels. Arrays may be uint8, uint16, bool or float in [0, 1],
    shaped [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (RGBA, composited on white).

    Args:
        image_or_path: a file path, or an image array as described above.
    """
    if isinstance(image_or_path, np.ndarray):
        return _from_array(image_or_path, "<array>")
    source = describe_source(image_or_path)
    path = Path(image_or_path)
    if not path.is_file():
        raise UnreadableImageError(f"{source}: no such file — check the path")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(
            f"{source}: not a readable image ({error}) — save it as PNG or JPEG and try again"
        ) from error
    if image.mode in _SIXTEEN_BIT_MODES:
        # 32-bit "I" images are read as 16-bit: that is what PIL makes of most 16-bit grayscale files.
        return _from_array(np.clip(np.asarray(image).astype(np.float64) / 65535.0, 0.0, 1.0), source)
    if image.mode == "F":
        return _from_array(np.asarray(image), source)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _from_array(np.asarray(image.convert("RGBA")), source)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")), dtype=np.uint8)


def _from_array(array: np.ndarray, source: str) -> np.ndarray:
    """Convert an image array of a supported shape and dtype to [H, W, 3] uint8 RGB."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise UnreadableImageError(
            f"{source}: image array has shape {array.shape}; expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]"
        )
    if array.dtype == np.uint8:
        unit = array.astype(np.float64) / 255.0
    elif array.dtype == np.uint16:
        unit = array.astype(np.float64) / 65535.0
    elif array.dtype == bool:
        unit = array.astype(np.float64)
    elif np.issubdtype(array.dtype, np.floating):
        unit = array.astype(np.float64)
        if not np.isfinite(unit).all() or unit.min() < -1e-3 or unit.max() > 1.0 + 1e-3:
            raise UnreadableImageError(
                f"{source}: float image values span [{np.nanmin(unit):.3g}, {np.nanmax(unit):.3g}]; "
                "expected finite values in [0, 1] — rescale them (divide 8-bit values by 255)"
            )
        unit = np.clip(unit, 0.0, 1.0)
    else:
        raise UnreadableImageError(
            f"{source}: image arrays of dtype {array.dtype} are not supported — pass uint8, uint16 or float in [0, 1]"
        )
    if unit.shape[2] == 1:
        unit = np.repeat(unit, 3, axis=2)
    elif unit.shape[2] == 4:
        alpha = unit[:, :, 3:]
        unit = unit[:, :, :3] * alpha + (1.0 - alpha)  # composite on white
    return np.ascontiguousarray(np.round(unit * 255.0), dtype=np.uint8)
