"""The official preprocessing: resize to S x S (bilinear), normalise.

Training, evaluation, the prediction command and an exported model's
inferencer must transform images and masks identically, or anomaly maps drift
off the ground truth; this module is the one place that does it. Resizing goes
through PIL (as torchvision does on PIL images), which antialiases when
shrinking: ``resize_rgb`` is that resize, and everything else calls it.

torch is imported only inside the functions that build tensors, so reading and
resizing work where torch is absent (the exported-model inferencer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import DataError, check_positive_int, value_error

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def check_mask_threshold(threshold) -> float:
    """A float in [0, 1); a DataError otherwise."""
    ok = not isinstance(threshold, bool) and isinstance(threshold, (int, float)) and 0.0 <= threshold < 1.0
    if not ok:
        raise value_error("mask_threshold", f"{threshold!r} is out of range", "allowed: a number in [0, 1)")
    return float(threshold)


def _check_rgb(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"expected an H x W x 3 uint8 array, got {rgb.dtype} {rgb.shape}")
    return rgb


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 uint8 -> size x size x 3 uint8: PIL bilinear, the resize training uses.

    Raises:
        DataError: ``rgb`` is not H x W x 3 uint8, or ``size`` is not a positive integer.
    """
    size = check_positive_int(size, "image_size")
    img = Image.fromarray(_check_rgb(rgb), "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def to_unit_float(rgb_batch: np.ndarray) -> np.ndarray:
    """B x S x S x 3 uint8 (or one S x S x 3) -> B x 3 x S x S float32 in [0, 1].

    The input ``mtad.deploy`` models take (they normalise inside).
    """
    a = np.asarray(rgb_batch)
    if a.ndim == 3:
        a = a[None]
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3:
        raise DataError(f"expected B x S x S x 3 uint8 images, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def prepare_image(
    rgb: np.ndarray, image_size: int = 256
) -> tuple["torch.Tensor", np.ndarray]:
    """8-bit RGB (H x W x 3) -> (normalised 3 x S x S float32 tensor, S x S x 3 uint8 for
    display), S = ``image_size``. The tensor is (x / 255 - IMAGENET_MEAN) / IMAGENET_STD
    per channel.
    """
    import torch

    display = np.ascontiguousarray(resize_rgb(rgb, image_size))
    x = (display.astype(np.float32) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), display


def resize_mask(mask: np.ndarray, image_size: int = 256, threshold: float = 0.5) -> np.ndarray:
    """Boolean H x W mask -> S x S bool (S = ``image_size``): resized as a float image with
    the image's filter, a defect where the resized value is above ``threshold``."""
    image_size = check_positive_int(image_size, "image_size")
    threshold = check_mask_threshold(threshold)
    m = np.asarray(mask, dtype=np.float32)
    img = Image.fromarray(m, "F").resize((image_size, image_size), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(img) > threshold)


def prepare_mask(
    mask: np.ndarray,
    image_size: int = 256,
    threshold: float = 0.5,
) -> "torch.Tensor":
    """Boolean H x W mask -> 1 x S x S float32 tensor in {0, 1} (see ``resize_mask``)."""
    import torch

    m = resize_mask(mask, image_size, threshold)
    return torch.from_numpy(m.astype(np.float32)[None])


def denormalise(x) -> np.ndarray:
    """Inverse of the normalisation: 3 x H x W tensor (or array) -> H x W x 3 uint8."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    a = np.asarray(x, dtype=np.float32).transpose(1, 2, 0) * _STD + _MEAN
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
