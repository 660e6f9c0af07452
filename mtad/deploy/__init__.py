"""Deployment: run a trained model anywhere, as a PyTorch checkpoint or as an export.

Every consumer of a trained model (``mtad predict``, ``mtad serve``, benchmarks)
goes through one interface, whatever runs underneath:

    model = open_model(path)          # a run folder / last.pt (torch) or an export folder
    anomaly_map, pred_score = model.predict(images)
        # images:      B x 3 x S x S float32, RGB in [0, 1] (S = model.image_size;
        #              see `mtad.data.transforms.resize_rgb` for the resize training used)
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

__all__ = ["Inferencer", "DeployError", "MODEL_FILES", "is_export", "open_model"]

# The model file of each export format (OpenVINO's weights lie beside it in model.bin).
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}


class Inferencer(Protocol):
    image_size: int
    class_names: list[str]
    thresholds: dict | None
    info: dict

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def is_export(path: str | Path) -> bool:
    """True for a folder written by `mtad export` (it holds metadata.json)."""
    path = Path(path)
    return path.is_dir() and (path / "metadata.json").is_file()


def open_model(path: str | Path, device: str = "auto") -> Inferencer:
    """A trained model ready to predict, named by a run folder, its checkpoint file,
    or an export folder. ``device`` applies to checkpoints (auto, cpu, cuda, cuda:N).

    Raises:
        mtad.engine.checkpoint.CheckpointError: not a readable run or checkpoint.
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
