"""A trained checkpoint behind the `mtad.deploy.Inferencer` interface (PyTorch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtad.data.preprocess import PreProcessor
from mtad.deploy import as_model_input


class Normalised(nn.Module):
    """The whole inference on the model input (`mtad.data.transforms.MODEL_INPUT`: RGB
    in [0, 1]): the `PreProcessor` (ImageNet normalisation), then MTAD.predict. What an
    export holds, and what the torch path runs."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.pre_processor = PreProcessor()

    def forward(self, images: torch.Tensor):
        """B x 3 x S x S in [0, 1] -> (anomaly_map B x 1 x S x S, pred_score B)."""
        pred = self.model.predict(self.pre_processor(images))
        return pred.anomaly_map, pred.pred_score


class TorchModel:
    """`open_model` for a run folder or checkpoint file; see `mtad.deploy`."""

    def __init__(self, path: str | Path, device: str = "auto"):
        from mtad.runfile import load_run, pick_device

        self.device = pick_device(device)
        self.run = load_run(path, self.device)
        self.net = Normalised(self.run.model).to(self.device).eval()
        self.image_size = int(self.run.config.data.image_size)
        self.class_names = list(self.run.class_names)
        self.thresholds = self.run.active_thresholds()   # calibration.json, else last.pt's
        self.info = {"kind": "checkpoint", "source": str(self.run.checkpoint),
                     "epoch": self.run.epoch, "results": self.run.results,
                     "history": self.run.history, "train_loss": self.run.train_loss,
                     "config": self.run.config.to_dict()}

    @property
    def checkpoint_sha256(self) -> str:
        """SHA-256 of the run's checkpoint file (hex), as `ExportedModel` records it."""
        return self.run.sha256()

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images`` B x 3 x S x S as `mtad.deploy.as_model_input` takes them (uint8,
        uint16, or float RGB in [0, 1]) -> (anomaly_map B x 1 x S x S, pred_score B),
        float32. Raises DeployError for any other shape, dtype or range."""
        x = torch.from_numpy(as_model_input(images, self.image_size)).to(self.device)
        anomaly_map, pred_score = self.net(x)
        return anomaly_map.float().cpu().numpy(), pred_score.float().cpu().numpy()
