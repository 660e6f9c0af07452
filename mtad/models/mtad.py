"""MTAD: frozen encoder -> fusion neck -> Mamba-Transformer decoder that reconstructs
the encoder's features; where the reconstruction disagrees, there is an anomaly.

`MTAD()` builds the official architecture (ResNet34 encoder, untrained unless
asked); `MTAD(MTADConfig(encoder="efficientnet_lite0", weights="packaged"))`
builds the offline variant, whose neck and decoder widths follow the encoder.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from mtad.models.encoder import Encoder
from mtad.models.mtrec import ATTENTIONS, MTRecBlock
from mtad.models.neck import Neck
from mtad.models.scan_order import ORDERS


@dataclass
class MTADConfig:
    """Every architectural choice; the defaults are the official model."""

    encoder: str = "resnet34"
    weights: str = "none"          # none | pretrained (timm hub) | packaged | path to a state dict
    depths: tuple = (3, 4, 6, 3)   # MTRec blocks per decoder level, coarse to fine
    heads: int = 8
    window: int = 16
    mlp_ratio: float = 4.0
    drop_path: float = 0.2
    attention: str = "linear"      # linear | softmax | none
    scan_order: str = "official"   # official | hilbert | sweep | zigzag
    d_state: int = 8
    d_conv: int = 3
    expand: int = 1
    neck_blocks: int = 3
    loss_weight: float = 5.0
    smoothing_sigma: float = 4.0

    def __post_init__(self):
        self.depths = tuple(int(d) for d in self.depths)
        if len(self.depths) != 4 or min(self.depths) < 1:
            raise ValueError(f"model.depths: needs 4 levels of at least 1 block each, "
                             f"got {list(self.depths)}")
        for key in ("heads", "window", "d_state", "d_conv", "expand", "neck_blocks"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"model.{key}: must be 1 or more, got {getattr(self, key)!r}")
        import timm

        if not timm.is_model(self.encoder):
            import difflib

            close = difflib.get_close_matches(self.encoder, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"model.encoder: unknown encoder {self.encoder!r}{hint}; any timm "
                             f"model name with features_only maps, e.g. resnet34, efficientnet_lite0")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"model.attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.scan_order not in ORDERS:
            raise ValueError(f"model.scan_order must be one of {ORDERS}, got {self.scan_order!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "MTADConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k != "scan_backend"}  # see config.RETIRED
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["depths"] = list(self.depths)
        return out


# The official anomaly map (ADer's cal_anomaly_map with amap_mode='add', as the authors'
# trainer calls it) divides the sum of the scales' 1 - cos maps by
# len(scales) * sum(weights) = 3 * 3 before smoothing.
OFFICIAL_MAP_DIVISOR = 9.0


class Prediction(NamedTuple):
    anomaly_map: torch.Tensor  # B x 1 x H x W, smoothed, at the input size
    pred_score: torch.Tensor   # B, the maximum of each map (the official image score)


class DecoderLevel(nn.Module):
    """Optional 2x upsampling, then the level's MTRec blocks."""

    def __init__(self, c_in: int, dim: int, depth: int, drop_paths: list[float], upsample: bool,
                 block_kwargs: dict):
        super().__init__()
        self.upsample = None
        if upsample:
            self.upsample = nn.Sequential(
                nn.ConvTranspose2d(c_in, dim, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(dim), nn.SiLU(),
            )
        self.blocks = nn.ModuleList(
            MTRecBlock(dim, drop_path=drop_paths[i], variant=i, **block_kwargs)
            for i in range(depth)
        )

    def forward(self, x):
        if self.upsample is not None:
            x = self.upsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class Decoder(nn.Module):
    """Four levels, coarse to fine; the last three are compared with the encoder."""

    def __init__(self, dims: list[int], cfg: MTADConfig):
        super().__init__()
        total = sum(cfg.depths)
        rates = torch.linspace(0, cfg.drop_path, total).tolist()
        block_kwargs = dict(heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, attention=cfg.attention,
                            window=cfg.window, order=cfg.scan_order, d_state=cfg.d_state,
                            d_conv=cfg.d_conv, expand=cfg.expand)
        levels, start = [], 0
        for i, (dim, depth) in enumerate(zip(dims, cfg.depths)):
            levels.append(DecoderLevel(dims[i - 1] if i else dim, dim, depth,
                                       rates[start:start + depth], upsample=i > 0,
                                       block_kwargs=block_kwargs))
            start += depth
        self.levels = nn.ModuleList(levels)

    def forward(self, x) -> list[torch.Tensor]:
        outs = []
        for level in self.levels:
            x = level(x)
            outs.append(x)
        return outs


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of B x 1 x H x W maps, equal to
    scipy.ndimage.gaussian_filter(sigma, truncate, mode='reflect') per map."""
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps)

    def pad_symmetric(x, dim, size):
        # scipy's 'reflect' repeats the edge sample (numpy's 'symmetric'); wrap
        # around again when the radius exceeds the map (tiny inputs).
        while size > 0:
            step = min(size, x.shape[dim])
            head = x.narrow(dim, 0, step).flip(dim)
            tail = x.narrow(dim, x.shape[dim] - step, step).flip(dim)
            x = torch.cat([head, x, tail], dim)
            size -= step
        return x

    x = pad_symmetric(maps, -1, radius)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = pad_symmetric(x, -2, radius)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x


class MTAD(nn.Module):
    """Reconstruct the encoder's multi-scale features; compare to find anomalies."""

    def __init__(self, config: MTADConfig | dict | None = None, **overrides):
        super().__init__()
        if config is None:
            config = MTADConfig(**overrides)
        elif isinstance(config, dict):
            config = MTADConfig.from_dict({**config, **overrides})
        elif overrides:
            config = MTADConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.encoder = Encoder(config.encoder, config.weights)
        c1, c2, c3 = self.encoder.channels
        self.neck = Neck((c1, c2, c3), blocks=config.neck_blocks)
        self.decoder = Decoder([self.neck.out_channels, c3, c2, c1], config)
        # Not a config key: which scale a run's maps (and so its thresholds) are on is a
        # fact of the run, recorded by its checkpoint's run format (mtad/runfile.py).
        self.map_divisor = OFFICIAL_MAP_DIVISOR
        self._init_decoder()

    @property
    def scan_backend(self) -> str | None:
        """The selective-scan backend every Mamba mixer asks for: a `mtad.ops.scan`
        backend name, or None (MTAD_SCAN_BACKEND, then automatic). A run-time choice,
        never saved with the model (not in its config nor its state dict)."""
        return getattr(self, "_scan_backend", None)

    @scan_backend.setter
    def scan_backend(self, name: str | None) -> None:
        from mtad.models.mamba import Mamba

        self._scan_backend = name
        for module in self.modules():
            if isinstance(module, Mamba):
                module.scan_backend = name

    def _init_decoder(self):
        # The official model resets every Linear in the decoder (Mamba's
        # projections too, so its dt-bias initialisation is overwritten).
        for m in self.decoder.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor):
        """Encoder features (F1, F2, F3) and their reconstructions, finest first."""
        features = self.encoder(images)
        levels = self.decoder(self.neck(features))
        return features, levels[1:][::-1]

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        features, recon = self(images)
        return sum(self.config.loss_weight * F.mse_loss(r.float(), f.float())
                   for f, r in zip(features, recon))

    def anomaly_map(self, features, recon, size) -> torch.Tensor:
        """Per scale 1 - cosine similarity, upsampled (bilinear, align_corners), summed,
        divided by `map_divisor` (9, the official scale; 1 for runs of run format 1),
        then Gaussian-smoothed (`smoothing_sigma`, 4)."""
        total = 0
        for f, r in zip(features, recon):
            d = 1 - F.cosine_similarity(f.float(), r.float(), dim=1).unsqueeze(1)
            total = total + F.interpolate(d, size=size, mode="bilinear", align_corners=True)
        if self.map_divisor != 1:
            total = total / self.map_divisor
        return gaussian_blur(total, self.config.smoothing_sigma)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Anomaly maps and image scores of ImageNet-normalised B x 3 x H x W images.

        Returns ``Prediction(anomaly_map, pred_score)``: B x 1 x H x W maps (the mean of
        1 - cosine similarity over the three scales, divided by 3 again as the official
        code does, Gaussian-smoothed; values in [0, 2/3], in practice about 0..0.3; runs of
        run format 1 keep their 9x larger scale) and B scores, each its map's maximum
        (as the official code).
        """
        features, recon = self(images)
        maps = self.anomaly_map(features, recon, images.shape[-2:])
        return Prediction(maps, maps.flatten(1).amax(dim=1))


MODELS = {"mtad": MTAD}


def create_model(name: str = "mtad", **config) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
    return MODELS[name](MTADConfig.from_dict(config))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table(model: MTAD) -> list[tuple[str, int]]:
    """(group, parameters) rows in the official log's breakdown."""
    rows = [("encoder", count_parameters(model.encoder)), ("neck", count_parameters(model.neck)),
            ("decoder", count_parameters(model.decoder))]
    for i, level in enumerate(model.decoder.levels):
        rows.append((f"decoder.levels[{i}]", count_parameters(level)))
        if level.upsample is not None:
            rows.append((f"decoder.levels[{i}].upsample", count_parameters(level.upsample)))
        rows.append((f"decoder.levels[{i}].blocks[0]", count_parameters(level.blocks[0])))
    rows.append(("total", count_parameters(model)))
    return rows

