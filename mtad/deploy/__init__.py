"""Deployment: run a trained model anywhere, as a PyTorch checkpoint or as an export.

Every consumer of a trained model (``mtad predict``, ``mtad serve``, benchmarks)
goes through one interface, whatever runs underneath:

    model = open_model(path)          # a run folder / last.pt (torch) or an export folder
    anomaly_map, pred_score = model.predict(images)
        # images:      B x 3 x S x S RGB (S = model.image_size; see `as_model_input`
        #              for the dtypes and ranges taken, and `mtad.data.transforms.model_input`
        #              for a photo's path to it, the one training takes)
        # anomaly_map: B x 1 x S x S float32 (smoothed, as MTAD.predict)
        # pred_score:  B float32 (each map's maximum)
    model.image_size, model.class_names, model.thresholds (format: mtad.postprocess),
    model.info  (dict: "kind", "source", "results", "history", ... for people and /api/model)

This package's export-folder inferencer imports neither torch nor timm: an
inspection line installs numpy, Pillow and one runtime (onnxruntime or OpenVINO).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from mtad.deploy.errors import DeployError

__all__ = ["Inferencer", "DeployError", "MODEL_FILES", "as_model_input", "is_export",
           "open_model"]

# The model file of each export format (OpenVINO's weights lie beside it in model.bin).
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}


# Scale of each integer dtype `as_model_input` takes: its maximum is white.
INTEGER_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
# How far outside [0, 1] a float image may lie and still count as [0, 1]: rounding of
# arithmetic on [0, 1] data (one float16 step at 1.0 is 9.8e-4), a quarter of one 8-bit
# level. A 0..255 image, or an ImageNet-normalised one (-2.1..2.6), lies far outside.
FLOAT_SLACK = 1e-3


def as_model_input(images, image_size: int) -> np.ndarray:
    """The input contract of every `Inferencer.predict` (checkpoint and export alike):
    ``images`` -> B x 3 x S x S float32 RGB in [0, 1], C-contiguous: the model input
    stated in `mtad.data.transforms.MODEL_INPUT`, which `mtad.data.transforms.model_input`
    makes from a photo (stack its results for a batch).

    Taken, by dtype alone (values never decide how an array is read):
        uint8: 0..255, divided by 255;  uint16: 0..65535, divided by 65535;
        float16/32/64: RGB in [0, 1] (values up to `FLOAT_SLACK` outside, from
        rounding, are clipped). ImageNet normalisation happens inside the model: do
        not normalise (that is `mtad.models.MTAD.predict`'s input, not this one).

    Raises:
        DeployError: not B x 3 x S x S (channels first; the message names the expected
            and the received shape), another dtype (bool, signed or wider integers:
            their scale is unknown), or a float array with values outside [0, 1] or
            not finite (the message names the range found and the one expected).
    """
    x = np.asarray(images)
    s = int(image_size)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (s, s) or x.shape[0] < 1:
        raise DeployError(f"expected images of shape B x 3 x {s} x {s} (RGB in [0, 1]) for "
                          f"this model, got {x.shape}; resize to {s} x {s} and put channels "
                          "first (ExportedModel.read_images does)")
    if x.dtype in INTEGER_SCALES:
        return np.ascontiguousarray(x, dtype=np.float32) / np.float32(INTEGER_SCALES[x.dtype])
    if x.dtype.kind != "f":
        raise DeployError(f"images of dtype {x.dtype} are not taken: pass uint8 (0..255), "
                          "uint16 (0..65535) or float RGB in [0, 1]")
    x = np.ascontiguousarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())       # NaN propagates into both
    if not (lo >= -FLOAT_SLACK and hi <= 1 + FLOAT_SLACK):
        hint = (" (0..255 pixels: pass them as uint8, or divide by 255)" if hi > 1 + FLOAT_SLACK
                and lo >= -FLOAT_SLACK else " (ImageNet-normalised? the model normalises "
                "inside: pass RGB in [0, 1])" if lo < -FLOAT_SLACK else "")
        raise DeployError(f"float images must be RGB in [0, 1]; got values in "
                          f"[{lo:.4g}, {hi:.4g}]{hint}")
    return np.clip(x, 0.0, 1.0) if lo < 0 or hi > 1 else x   # never the caller's array in place


class Inferencer(Protocol):
    image_size: int
    class_names: list[str]
    thresholds: dict | None
    info: dict

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images`` as `as_model_input` takes them -> (anomaly_map, pred_score)."""


def is_export(path: str | Path) -> bool:
    """True for a folder written by `mtad export` (it holds metadata.json)."""
    path = Path(path)
    return path.is_dir() and (path / "metadata.json").is_file()


def open_model(path: str | Path, device: str = "auto") -> Inferencer:
    """A trained model ready to predict, named by a run folder, its checkpoint file,
    or an export folder. ``device`` applies to checkpoints (auto, cpu, cuda, cuda:N).

    Raises:
        mtad.runfile.CheckpointError: not a readable run or checkpoint.
        DeployError: an export folder whose model file or metadata cannot be used.
    """
    folder = Path(path)
    if is_export(path) or (folder.is_dir() and not (folder / "last.pt").exists() and any(
            (folder / name).is_file() for name in MODEL_FILES.values())):
        # an export folder; one that lost its metadata.json gets ExportedModel's error
        from mtad.deploy.inferencer import ExportedModel  # torch-free

        return ExportedModel(path)
    from mtad.deploy.torch_model import TorchModel

    return TorchModel(path, device)
