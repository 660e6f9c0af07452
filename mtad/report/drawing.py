"""Heat-map overlays: the one drawing of an anomaly map over its image, used by
`mtad predict`, the report page and the web page. numpy + PIL only (no torch),
so an exported model can draw them too."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Anchor colours of a perceptual "turbo"-like ramp: dark blue -> cyan -> yellow -> red.
_RAMP = np.array([
    [48, 18, 59], [70, 107, 227], [40, 188, 235], [50, 241, 152],
    [164, 252, 60], [237, 208, 58], [251, 128, 34], [208, 47, 5], [122, 4, 3],
], dtype=np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (H x W) to uint8 RGB (H x W x 3)."""
    v = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * _RAMP[lo] + t * _RAMP[lo + 1]).round().astype(np.uint8)


def heatmap_scale(anomaly_map: np.ndarray, threshold: float | None) -> np.ndarray:
    """Display scale in [0, 1]: the image's lowest value at 0 and the decision threshold
    at 0.5, so that red always means "above the threshold" and blue the background."""
    low = float(anomaly_map.min())
    if threshold is None:
        top = float(anomaly_map.max())
        return (anomaly_map - low) / (top - low) if top > low else np.zeros_like(anomaly_map)
    return (anomaly_map - low) / (2.0 * max(threshold - low, 1e-12))


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float | None,
            alpha: float = 0.5) -> np.ndarray:
    heat = colorize(heatmap_scale(anomaly_map, threshold)).astype(np.float32)
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * heat).round().astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def draw_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float,
                 pred_score: float | None = None, image_threshold: float | None = None) -> np.ndarray:
    """Placeholder until the full drawing lands: the heat map over the image."""
    return overlay(rgb, anomaly_map, pixel_threshold)
