"""The ImageNet normalisation's one home: ``PreProcessor``, a torch module of the model.

Where it lives, and why: as anomalib's PreProcessor, the normalisation is a module
of the network that runs it (`mtad.deploy.torch_model.Normalised` holds one in
front of `mtad.models.MTAD.predict`), so an export's graph carries it and every
deployed model takes the plain contract of `mtad.data.transforms.MODEL_INPUT`
(float32 RGB in [0, 1]); nobody deploying a model has to know the statistics.
Training applies the same module to each sample in the dataset
(`mtad.data.transforms.prepare_image` -> ``normalise``) rather than in the training
step, so training batches, the evaluation report and `denormalise` keep their
meaning (ImageNet-normalised images) and the training step is unchanged. Same
module, same float32 operations: a training sample and the inference graph's
normalised input of the same photo are bit-identical (IEEE subtraction and
division, on numpy, torch CPU and CUDA alike).
"""
from __future__ import annotations

import torch
from torch import nn

from .transforms import IMAGENET_MEAN, IMAGENET_STD


class PreProcessor(nn.Module):
    """RGB in [0, 1] (... x 3 x H x W float32) -> ImageNet-normalised, same shape:
    (x - IMAGENET_MEAN) / IMAGENET_STD per channel. The statistics are buffers, not
    saved in a checkpoint (``persistent=False``): they are constants of the code."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """... x 3 x H x W in [0, 1] -> normalised, same shape and dtype."""
        return (images - self.mean) / self.std


_CPU = PreProcessor()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """``PreProcessor`` on a CPU tensor (... x 3 x H x W in [0, 1]): a dataset's sample."""
    return _CPU(images)
