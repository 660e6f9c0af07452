"""The one path from a photo to the model's input, and the model-input contract.

Training, evaluation, ``mtad predict``, ``mtad serve``, an export's parity check
and the exported-model inferencer must transform images and masks identically,
or anomaly maps drift off the ground truth; this module is the one place that
does it. ``model_input`` is that path for every consumer:

    photo (path, bytes, open file, or decoded H x W x 3 uint8)
      -> read as upright 8-bit RGB (`mtad.data.imageio.read_rgb`: EXIF orientation applied)
      -> resized to S x S (``resize_rgb``: PIL bilinear, antialiased when shrinking,
         as torchvision does on PIL images)
      -> 3 x S x S float32 RGB in [0, 1] (``to_unit_float``)

The model-input contract, stated once (``MODEL_INPUT``; `mtad.deploy.as_model_input`
checks it, an export's metadata.json records it): B x 3 x S x S (NCHW), float32,
RGB, values in [0, 1], C-contiguous. The ImageNet normalisation is not part of
it: it happens inside the model's torch graph, in
`mtad.data.preprocess.PreProcessor` (its one home; training batches get it from
the same module through ``prepare_image``).

torch is imported only inside the functions that build tensors, so reading and
resizing work where torch is absent (the exported-model inferencer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .errors import DataError, check_positive_int, value_error
from .imageio import read_rgb

if TYPE_CHECKING:
    import torch

# The normalisation's statistics (ImageNet's, which the encoder was trained on), applied
# by `mtad.data.preprocess.PreProcessor` inside the model and undone by ``denormalise``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The model-input contract (see the module docstring): what ``model_input`` returns (one
# image of the batch), what `mtad.deploy.as_model_input` takes, and what an export's
# metadata.json "input" records.
MODEL_INPUT = {"layout": "NCHW", "dtype": "float32", "channel_order": "RGB",
               "value_range": [0.0, 1.0],
               "resize": "PIL bilinear to image_size x image_size (mtad.data.transforms.resize_rgb)"}

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def check_sizes(image_size, crop_size=None) -> int:
    """The output side: ``crop_size`` when given, else ``image_size``.

    Raises:
        DataError: ``image_size`` is not a positive integer, or ``crop_size`` is
            not an integer in 1..image_size.
    """
    image_size = check_positive_int(image_size, "image_size")
    if crop_size is None:
        return image_size
    crop = check_positive_int(crop_size, "crop_size")
    if crop > image_size:
        raise value_error("crop_size", f"{crop_size!r} is larger than image_size ({image_size})",
                          f"allowed: an integer in 1..{image_size}")
    return crop


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


def _centre_crop(a: np.ndarray, size: int) -> np.ndarray:
    """The central size x size of ``a``'s last two axes (H, W)."""
    h, w = a.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return a[..., top : top + size, left : left + size]


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


def model_input(photo, image_size: int, exif_orientation: bool = True,
                max_pixels: int | None = None) -> np.ndarray:
    """A photo -> the model's input for it: 3 x S x S float32 RGB in [0, 1], C-contiguous
    (S = ``image_size``; stack them for a B x 3 x S x S batch, ``MODEL_INPUT``).

    The one path every consumer takes (training through ``prepare_image``, predict,
    serve, calibrate, the export's parity check, `ExportedModel.read_images`); torch-free.

    Args:
        photo: a path, an open binary file, the bytes of a file (read with
            `mtad.data.imageio.read_rgb`: EXIF orientation applied unless
            ``exif_orientation=False``, 16-bit scaled, alpha dropped), or an already
            decoded upright H x W x 3 uint8 array (as ``read_rgb`` returns).
        image_size: S, a positive integer.
        max_pixels: refuse a file of more pixels, from its header (see ``read_rgb``).

    Raises:
        DataError: a file that cannot be read (naming it), an array that is not
            H x W x 3 uint8, or ``image_size`` not a positive integer.
    """
    rgb = photo if isinstance(photo, np.ndarray) else read_rgb(photo, exif_orientation,
                                                               max_pixels)
    return to_unit_float(resize_rgb(rgb, image_size))[0]


def prepare_image(
    rgb: np.ndarray, image_size: int = 256, crop_size: int | None = None
) -> tuple["torch.Tensor", np.ndarray]:
    """8-bit RGB (H x W x 3) -> (normalised 3 x C x C float32 tensor, C x C x 3 uint8 for display).

    A training sample: ``model_input`` (centre-cropped to C), then the model's
    `mtad.data.preprocess.PreProcessor`: (x / 255 - IMAGENET_MEAN) / IMAGENET_STD per
    channel, bit-identical to what the inference graph computes on the same photo.
    C is ``crop_size`` or, by default, ``image_size`` (the crop is then a no-op).
    """
    import torch

    from .preprocess import normalise

    crop = check_sizes(image_size, crop_size)
    x = np.ascontiguousarray(_centre_crop(model_input(rgb, image_size), crop))
    display = np.rint(x.transpose(1, 2, 0) * np.float32(255.0)).astype(np.uint8)  # k/255*255 -> k
    return normalise(torch.from_numpy(x)), display


def resize_mask(mask: np.ndarray, image_size: int = 256, threshold: float = 0.5,
                crop_size: int | None = None) -> np.ndarray:
    """Boolean H x W mask -> C x C bool: resized as a float image with the image's
    filter, a defect where the resized value is above ``threshold``."""
    crop = check_sizes(image_size, crop_size)
    threshold = check_mask_threshold(threshold)
    m = np.asarray(mask, dtype=np.float32)
    img = Image.fromarray(m, "F").resize((image_size, image_size), Image.BILINEAR)
    return np.ascontiguousarray(_centre_crop(np.asarray(img), crop) > threshold)


def prepare_mask(
    mask: np.ndarray,
    image_size: int = 256,
    threshold: float = 0.5,
    crop_size: int | None = None,
) -> "torch.Tensor":
    """Boolean H x W mask -> 1 x C x C float32 tensor in {0, 1} (see ``resize_mask``)."""
    import torch

    m = resize_mask(mask, image_size, threshold, crop_size)
    return torch.from_numpy(m.astype(np.float32)[None])


def denormalise(x) -> np.ndarray:
    """Inverse of the normalisation: 3 x H x W tensor (or array) -> H x W x 3 uint8."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    a = np.asarray(x, dtype=np.float32).transpose(1, 2, 0) * _STD + _MEAN
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
