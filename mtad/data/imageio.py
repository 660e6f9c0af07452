"""Robust reading of dataset images and masks: any mode, any orientation, any source.

Datasets mix greyscale, RGBA, palette, 16-bit PNG, BMP and JPEG files; the
model wants 8-bit RGB. PIL's own ``convert`` clips 16-bit data instead of
scaling it and raises bare ``OSError``s for corrupt files, so every read goes
through here and fails with a ``DataError`` naming the file.

EXIF orientation is applied on read, as ``PIL.ImageOps.exif_transpose``,
image viewers and annotation tools do: a phone photo tagged "rotate 90" is
read as people see it, and so is a mask drawn on it. Pass
``exif_orientation=False`` for the raw stored pixels. The orientation is taken
from the metadata PIL reads when it opens the file (for PNG: an ``eXIf`` chunk
before the image data, where the PNG specification puts it), so the header
check (``read_header``) and a full read always agree on it.

This module imports neither torch nor anything heavier than numpy and Pillow:
the exported-model inferencer and the web server read uploads with it.
"""
from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, ImageTooLarge

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)
# Suffixes of image formats mtad does not read (animated, HEIF family, newer codecs,
# camera raw, layered): a folder holding one is told so (`mtad predict` counts it as
# skipped and names it), where other files (notes, spreadsheets) are ignored silently.
UNREAD_IMAGE_EXTENSIONS = frozenset(
    {".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".svg", ".ico", ".psd",
     ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".raw", ".exr", ".hdr", ".pgm", ".ppm"}
)

# A path, an open binary file (an upload), or the bytes of a file.
Source = Union[str, os.PathLike, BinaryIO, bytes, bytearray, memoryview]

# Exceptions PIL raises for unreadable, truncated or malformed files.
_PIL_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
)

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> what a viewer does to the stored pixels to show them.
ORIENTATIONS = {
    1: "none",
    2: "mirror left-right",
    3: "rotate 180",
    4: "mirror top-bottom",
    5: "transpose",
    6: "rotate 90 clockwise",
    7: "transverse",
    8: "rotate 90 counter-clockwise",
}

# How masks are judged (``binarise_mask``). A label mask has a handful of
# distinct non-zero values (at most LABEL_LEVELS), none faint (under FAINT x the
# brightest): 0/255, LOCO's 236/240/255. Or it holds only small integers (at most
# INDEX_MAX): VisA's region values 1, 2, ... Anything else is a drawing with grey
# edges (JPEG ringing, anti-aliasing, blur).
LABEL_LEVELS = 8
FAINT = 0.1
INDEX_MAX = 31


@dataclass(frozen=True)
class Header:
    """What a file's header says, without decoding its pixels.

    ``size`` is (width, height) as read: after the EXIF orientation when it is
    applied (orientations 5-8 swap width and height); ``raw_size`` as stored.
    ``orientation`` is the EXIF value 1..8 (1: none), found even when not applied.
    ``lossy`` is True for JPEG, lossy WebP and JPEG-compressed TIFF.
    """

    size: tuple[int, int]
    raw_size: tuple[int, int]
    orientation: int
    format: str | None
    lossy: bool


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _source(src: Source) -> tuple[object, str]:
    """(what Image.open takes, the name errors show)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(src)), "<uploaded bytes>"
    if hasattr(src, "read"):
        return src, str(getattr(src, "name", None) or "<uploaded file>")
    path = os.fspath(src)
    return path, str(path)


@contextmanager
def _opened(src: Source, max_pixels: int | None = None) -> Iterator[tuple[Image.Image, str]]:
    """An opened (not decoded) image and its name; errors become DataErrors naming it."""
    fp, name = _source(src)
    try:
        with warnings.catch_warnings():
            # Large dataset images are fine; `max_pixels` is the limit callers set.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except FileNotFoundError:
        raise DataError(f"{name}: file not found", name) from None
    except Image.DecompressionBombError as exc:
        limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageTooLarge(f"{name}: too large to decode, more than the {limit:,}-pixel "
                            f"limit", name) from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: cannot read image (unknown or unsupported format)", name) from None
    except _PIL_ERRORS as exc:
        raise DataError(f"{name}: cannot read image ({exc})", name) from None
    try:
        if max_pixels is not None:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLarge(
                    f"{name}: {w} x {h} = {w * h:,} pixels, more than the {max_pixels:,}-pixel limit",
                    name,
                )
        yield img, name
    finally:
        if not hasattr(src, "read"):  # a file the caller opened stays open
            img.close()


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation PIL found when opening the file (1 when none or broken)."""
    try:
        # The base class's getexif: PNG's own would decode the whole image first.
        value = int(Image.Image.getexif(img).get(_ORIENTATION_TAG, 1))
    except (*_PIL_ERRORS, KeyError, TypeError, IndexError):
        return 1  # a broken EXIF block: viewers show the pixels as stored
    return value if value in ORIENTATIONS else 1


def _oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation >= 5 else size


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an H x W (x C) array, as ``exif_transpose`` does."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _webp_is_lossy(fp) -> bool:
    """True when a WebP file's image chunk is VP8 (lossy), False for VP8L (lossless)."""
    here = fp.tell()
    try:
        fp.seek(12)
        for _ in range(64):
            head = fp.read(8)
            if len(head) < 8:
                return False
            tag, size = head[:4], struct.unpack("<I", head[4:])[0]
            if tag == b"VP8 ":
                return True
            if tag == b"VP8L":
                return False
            fp.seek(size + (size & 1), 1)
        return False
    finally:
        fp.seek(here)


def _is_lossy(img: Image.Image) -> bool:
    if img.format in ("JPEG", "MPO"):
        return True
    if img.format == "WEBP" and getattr(img, "fp", None) is not None:
        try:
            return _webp_is_lossy(img.fp)
        except (OSError, ValueError, struct.error):
            return False
    if img.format == "TIFF":
        return "jpeg" in str(img.info.get("compression", "")).lower()
    return False


# PNG: samples per pixel of each colour type, and the Adam7 passes (x0, y0, dx, dy).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))


def _png_short(fp) -> str | None:
    """How much of a PNG's image data (IDAT) is there, when it inflates to fewer bytes
    than its header's size needs ("4 of 200 rows"); None when it is all there.

    Pillow reads such a file without a word and leaves the missing rows black (its
    zlib decoder stops where the stream ends, however early): a camera or a writer
    stopped mid-image leaves one. This inflates the data once more, counting bytes
    and keeping none (a 24 MP PNG: 0.7 s of its 2.4 s read, measured on the 2-core CPU);
    ``fp`` is left where it was.
    """
    here = fp.tell()
    try:
        fp.seek(8)
        head = fp.read(8)
        if len(head) < 8 or head[4:] != b"IHDR":
            return None
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", fp.read(13))
        fp.seek(4, 1)                                    # IHDR's CRC
        bits = depth * _PNG_CHANNELS.get(colour, 0)
        passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
        sizes = [(math.ceil((height - y0) / dy), 1 + math.ceil(math.ceil((width - x0) / dx) * bits / 8))
                 for x0, y0, dx, dy in passes if width > x0 and height > y0]
        expected = sum(rows * row for rows, row in sizes)
        inflate, got = zlib.decompressobj(), 0
        while got < expected:
            head = fp.read(8)
            if len(head) < 8:
                break
            length, tag = struct.unpack(">I", head[:4])[0], head[4:]
            if tag == b"IEND":
                break
            if tag != b"IDAT":
                fp.seek(length + 4, 1)
                continue
            data = fp.read(length)
            fp.seek(4, 1)
            while data and got < expected:
                got += len(inflate.decompress(data, 1 << 20))
                data = inflate.unconsumed_tail
            if inflate.eof:
                break
    except (zlib.error, struct.error, OSError, ValueError):
        return None                                    # Pillow's own decoding judges these
    finally:
        fp.seek(here)
    if got >= expected or not sizes:
        return None
    if interlace:
        return f"{100 * got / expected:.0f} % of it (interlaced)"
    return f"{got // sizes[0][1]} of {height} rows"


def _check_complete(img: Image.Image, name: str) -> None:
    """DataError for an opened image whose pixel data ends early (see `_png_short`)."""
    short = _png_short(img.fp) if img.format == "PNG" and img.fp is not None else None
    if short is not None:
        raise DataError(f"{name}: cannot read image (truncated: its pixel data ends after "
                        f"{short})", name)


def read_header(src: Source, exif_orientation: bool = True) -> Header:
    """Size, orientation and format from the file header only (no pixel decoding).

    Cheap enough to check thousands of files before training.

    Raises:
        DataError: the file is missing or is not an image PIL can open.
    """
    with _opened(src) as (img, _):
        o = _orientation(img)
        raw = tuple(img.size)
        size = _oriented_size(raw, o) if exif_orientation else raw
        return Header(size, raw, o, img.format, _is_lossy(img))


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
    """8-bit RGB array (H x W x 3) from a PIL image of any mode (as stored, not oriented)."""
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


def read_rgb(src: Source, exif_orientation: bool = True, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as 8-bit RGB: H x W x 3 uint8, values 0..255.

    ``src`` is a path, an open binary file (an upload) or the file's bytes.
    The EXIF orientation is applied (as ``PIL.ImageOps.exif_transpose`` and
    image viewers do; masks read by ``read_mask`` get the same), so H x W is
    the size people see; ``exif_orientation=False`` returns the stored pixels.
    16-bit data is scaled (65535 -> 255), not clipped; alpha is dropped.
    ``max_pixels`` (width x height, from the header, before decoding) guards
    servers against decompression bombs; None: no limit but PIL's own.

    Raises:
        DataError: naming the file: missing, unreadable, truncated, or larger
            than ``max_pixels`` (or than PIL's decompression-bomb limit).
    """
    with _opened(src, max_pixels) as (img, name):
        o = _orientation(img) if exif_orientation else 1
        _check_complete(img, name)
        try:
            img.load()
            rgb = to_rgb(img)
        except _PIL_ERRORS as exc:
            raise DataError(f"{name}: cannot read image ({exc})", name) from None
    return orient(rgb, o)


def binarise_mask(values: np.ndarray) -> np.ndarray:
    """H x W mask values -> bool defect mask, decided by the mask's content.

    A label mask (a handful of distinct values, none faint next to the
    brightest, such as 0/255 or LOCO's 236/240/255; or small integers only,
    such as VisA's region values 1, 2, ...): every non-zero pixel is a defect.
    Anything else (a spread of grey levels from anti-aliased or blurred edges,
    or the faint values JPEG compression leaves next to bright ones) is a
    defect where it reaches half its maximum, so a JPEG-saved scratch keeps
    the drawn area.
    """
    a = np.asarray(values)
    if a.dtype == bool:
        return a.copy()
    if a.dtype.kind == "f":
        a = np.nan_to_num(a)
    if a.dtype == np.uint8:
        levels = np.flatnonzero(np.bincount(a.ravel(), minlength=256)[1:]) + 1
    else:
        levels = np.unique(a)
        levels = levels[levels > 0]
    if len(levels) == 0:
        return a > 0
    top = levels.max()
    if a.dtype.kind in "ui" and top <= INDEX_MAX:
        return a > 0
    if len(levels) <= LABEL_LEVELS and levels.min() >= FAINT * top:
        return a > 0
    return a >= top / 2


def read_mask(src: Source, exif_orientation: bool = True) -> np.ndarray:
    """Read a ground-truth mask as a boolean H x W array (True: defect).

    Values are judged by ``binarise_mask`` (label masks: any non-zero value;
    grey-level masks: half the maximum). Colour and palette masks count the
    brightest colour channel; an alpha channel is ignored. The EXIF
    orientation is applied as for images (``exif_orientation=False``: raw).

    Raises:
        DataError: naming the file: missing, unreadable or truncated.
    """
    with _opened(src) as (img, name):
        o = _orientation(img) if exif_orientation else 1
        _check_complete(img, name)
        try:
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            a = np.asarray(img)
        except _PIL_ERRORS as exc:
            raise DataError(f"{name}: cannot read mask ({exc})", name) from None
    if a.ndim == 3:
        # Ignore an alpha channel: it says nothing about the defect.
        channels = a.shape[2]
        if channels in (2, 4):
            a = a[:, :, : channels - 1]
        a = a.max(axis=2)
    return orient(binarise_mask(a), o)
