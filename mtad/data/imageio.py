"""Robust reading of dataset images and masks.

Datasets mix greyscale, RGBA, palette, 16-bit PNG, BMP and JPEG files; the
model wants 8-bit RGB. PIL's own ``convert`` clips 16-bit data instead of
scaling it and raises bare ``OSError``s for corrupt files, so every read goes
through here and fails with a ``DataError`` naming the file.
"""
from __future__ import annotations

import os
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

# Exceptions PIL raises for unreadable, truncated or malformed files.
_PIL_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
    struct.error,
)


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _open(path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning and friends: large images are fine here.
            warnings.simplefilter("ignore")
            img = Image.open(path)
            img.load()
        return img
    except FileNotFoundError:
        raise DataError(f"{path}: file not found", path) from None
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({exc})", path) from None


def image_size(path) -> tuple[int, int]:
    """(width, height) from the file header only: a cheap sanity check."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return img.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found", path) from None
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({exc})", path) from None


def _wide_to_uint8(a: np.ndarray, bits: int | None) -> np.ndarray:
    """Scale integer data of ``bits`` depth (None: guess from range) to 0..255."""
    a = a.astype(np.float64)
    if bits is None:
        hi = float(a.max()) if a.size else 0.0
        bits = 8 if hi <= 255 else 16 if hi <= 65535 else 32
    if bits == 8:
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    full = float(2**bits - 1)
    return np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8)


def _float_to_uint8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo < 0 or hi > 255:
        a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _grey_to_uint8(img: Image.Image) -> np.ndarray | None:
    """8-bit grey array for the wide greyscale modes PIL cannot convert well."""
    mode = img.mode
    if mode.startswith("I;16"):
        return _wide_to_uint8(np.asarray(img), 16)
    if mode == "I":
        # PNG stores at most 16 bits per sample; other formats: judge by range.
        return _wide_to_uint8(np.asarray(img), 16 if img.format == "PNG" else None)
    if mode == "F":
        return _float_to_uint8(np.asarray(img))
    return None


def to_rgb(img: Image.Image) -> np.ndarray:
    """8-bit RGB array (H x W x 3) from a PIL image of any mode."""
    grey = _grey_to_uint8(img)
    if grey is not None:
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    ):
        # Drop alpha without compositing: dataset masks refer to the raw pixels.
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def read_rgb(path) -> np.ndarray:
    """Read any image file as 8-bit RGB (H x W x 3 uint8).

    16-bit data is scaled (65535 -> 255), not clipped; alpha is dropped; EXIF
    orientation is ignored because dataset masks are stored unrotated.
    """
    img = _open(path)
    try:
        return to_rgb(img)
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot convert image to RGB ({exc})", path) from None
    finally:
        img.close()


def read_mask(path) -> np.ndarray:
    """Read a mask as a boolean H x W array: any non-zero value is a defect.

    VisA masks hold small class indices (1, 2, ...), not 255, and some masks
    are RGB or palette images, hence "non-zero in any colour channel".
    """
    img = _open(path)
    try:
        if img.mode == "P":
            img = img.convert("RGB")
        a = np.asarray(img)
        if a.ndim == 3:
            # Ignore an alpha channel: it says nothing about the defect.
            channels = a.shape[2]
            if channels in (2, 4):
                a = a[:, :, : channels - 1]
            a = a.any(axis=2)
        return np.ascontiguousarray(a != 0)
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot read mask ({exc})", path) from None
    finally:
        img.close()
