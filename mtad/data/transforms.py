"""The official preprocessing: resize to S x S (bilinear), centre-crop, normalise.

Training, evaluation and the prediction command must transform images and
masks identically, or anomaly maps drift off the ground truth; this module is
the one place that does it. Resizing goes through PIL (as torchvision does on
PIL images), which antialiases when shrinking.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def check_sizes(image_size: int, crop_size: int | None) -> int:
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if crop_size is None:
        return int(image_size)
    if int(crop_size) != crop_size or not 1 <= crop_size <= image_size:
        raise ValueError(
            f"crop_size must be an integer in 1..image_size ({image_size}), got {crop_size!r}"
        )
    return int(crop_size)


def _centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top : top + size, left : left + size]


def prepare_image(
    rgb: np.ndarray, image_size: int = 256, crop_size: int | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """8-bit RGB (H x W x 3) -> (normalised 3 x C x C tensor, C x C x 3 uint8 for display).

    C is ``crop_size`` or, by default, ``image_size`` (the crop is then a no-op).
    """
    crop = check_sizes(image_size, crop_size)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 array, got {rgb.dtype} {rgb.shape}")
    img = Image.fromarray(rgb, "RGB").resize((image_size, image_size), Image.BILINEAR)
    display = np.ascontiguousarray(_centre_crop(np.asarray(img), crop))
    x = (display.astype(np.float32) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), display


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """8-bit RGB H x W x 3 -> size x size x 3, resized as training resizes (PIL bilinear)."""
    return np.asarray(Image.fromarray(np.asarray(rgb), "RGB").resize((size, size), Image.BILINEAR))


def prepare_mask(
    mask: np.ndarray,
    image_size: int = 256,
    threshold: float = 0.5,
    crop_size: int | None = None,
) -> torch.Tensor:
    """Boolean H x W mask -> 1 x C x C float tensor in {0, 1}.

    The mask is resized as a float image with the same filter as the image, and
    a pixel is a defect when its resized value is above ``threshold``.
    """
    crop = check_sizes(image_size, crop_size)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"mask_threshold must be in [0, 1), got {threshold!r}")
    m = np.asarray(mask, dtype=np.float32)
    img = Image.fromarray(m, "F").resize((image_size, image_size), Image.BILINEAR)
    m = _centre_crop(np.asarray(img), crop) > threshold
    return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)[None])


def denormalise(x: torch.Tensor) -> np.ndarray:
    """Inverse of the normalisation: 3 x H x W tensor -> H x W x 3 uint8."""
    a = x.detach().cpu().float().numpy().transpose(1, 2, 0) * _STD + _MEAN
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
