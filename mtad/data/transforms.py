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
    rgb: np.ndarray, image_size: int = 256
) -> tuple["torch.Tensor", np.ndarray]:
    """8-bit RGB (H x W x 3) -> (normalised 3 x S x S float32 tensor, S x S x 3 uint8 for
    display), S = ``image_size``.

    A training sample: ``model_input``, then the model's
    `mtad.data.preprocess.PreProcessor`: (x / 255 - IMAGENET_MEAN) / IMAGENET_STD per
    channel, bit-identical to what the inference graph computes on the same photo.
    """
    import torch

    from .preprocess import normalise

    x = np.ascontiguousarray(model_input(rgb, image_size))
    return normalise(torch.from_numpy(x)), input_rgb(x)


def input_rgb(x: np.ndarray) -> np.ndarray:
    """A model input (3 x S x S float32, k / 255) back as the S x S x 3 uint8 picture it
    came from, exactly (k / 255 * 255 rounds to k): for display, or to keep many inputs
    in a quarter of the memory."""
    return np.rint(x.transpose(1, 2, 0) * np.float32(255.0)).astype(np.uint8)


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
