"""Heat-map overlays: the one drawing of an anomaly map over its image, used by
`mtad predict`, the report page and the web page. numpy + PIL only (no torch),
so an exported model can draw them too.

`draw_overlay` is the picture a person judges a part by: the heat map blended
over the photo, the outline of the predicted defect (the map at or above the
pixel threshold, or the outline `mtad.postprocess.decide` computed) and a banner
with the score and the verdict (OK / REVIEW / NG) against the thresholds. The web page (mtad/serve/static/app.js) redraws the same picture in
the browser when its sliders move; it receives `ramp_lut()` and follows
`outline_width`, `banner_font_size` and the colours below, so both look alike.
"""
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


def _scale_of(anomaly_map: np.ndarray, threshold: float | None) -> tuple[float, float | None]:
    """(low, divisor) of `heatmap_scale` for this map; divisor None: all zeros."""
    low = float(anomaly_map.min())
    if threshold is None:
        top = float(anomaly_map.max())
        return low, (top - low if top > low else None)
    return low, 2.0 * max(threshold - low, 1e-12)


def heatmap_scale(anomaly_map: np.ndarray, threshold: float | None,
                  scale: tuple[float, float | None] | None = None) -> np.ndarray:
    """Display scale in [0, 1]: the image's lowest value at 0 and the decision threshold
    at 0.5, so that red always means "above the threshold" and blue the background.
    ``scale``: the (low, divisor) of the whole map, when ``anomaly_map`` is a part of it."""
    low, divisor = scale if scale is not None else _scale_of(anomaly_map, threshold)
    return (anomaly_map - low) / divisor if divisor is not None else np.zeros_like(anomaly_map)


# Pixels blended at once by `overlay`: its float work stays ~8 MB whatever the photo's size.
_BLOCK_PIXELS = 1 << 16


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float | None,
            alpha: float = 0.5) -> np.ndarray:
    """The heat map of ``anomaly_map`` (H x W) blended over ``rgb`` (H x W x 3 uint8):
    H x W x 3 uint8. Computed in blocks of rows, so that memory beyond the result is
    bounded (~8 MB whatever the size; blending a 24 MP photo at once took 1.8 GB)."""
    scale = _scale_of(anomaly_map, threshold)
    out = np.empty(rgb.shape, np.uint8)
    step = max(1, _BLOCK_PIXELS // max(1, rgb.shape[1]))
    for top in range(0, rgb.shape[0], step):
        rows = slice(top, top + step)
        heat = colorize(heatmap_scale(anomaly_map[rows], threshold, scale)).astype(np.float32)
        out[rows] = ((1 - alpha) * rgb[rows].astype(np.float32) + alpha * heat).round()
    return out


# The outline and the banner's verdict colours (also used by the web page).
OUTLINE_RGB = (255, 255, 255)
OK_RGB = (110, 231, 140)
REVIEW_RGB = (255, 196, 64)
DEFECTIVE_RGB = (255, 92, 92)     # the NG colour
VERDICT_RGB = {"OK": OK_RGB, "REVIEW": REVIEW_RGB, "NG": DEFECTIVE_RGB}
BANNER_ALPHA = 0.65


def ramp_lut(levels: int = 256) -> list[list[int]]:
    """``colorize`` sampled at ``levels`` evenly spaced values of [0, 1], as plain
    lists of [r, g, b]: what the web page draws heat maps with."""
    return colorize(np.linspace(0.0, 1.0, levels)).tolist()


def outline_width(height: int, width: int) -> int:
    """Outline thickness in pixels for an image of that size: 1 px up to ~300 px,
    thicker on large photos so it stays visible when shown shrunk."""
    return max(1, int(min(height, width) / 300 + 0.5))  # half up, as the page's Math.round


def banner_font_size(height: int, width: int) -> int:
    """Font size (px) of the score banner: about 1/18 of the width, 11..64 px
    (`draw_overlay` shrinks it further, to 8 px at least, when the text is wider
    than the image)."""
    return int(min(64, max(11, int(min(width, 2 * height) / 18 + 0.5))))


def defect_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary band of a boolean H x W mask: mask pixels within ``width``
    steps (4-neighbour) of a pixel outside it or of the image border. Returns a
    boolean H x W array (empty where the mask is empty)."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    for _ in range(max(1, int(width))):
        padded = np.pad(inner, 1, constant_values=False)   # outside the image counts as outside
        inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
                 & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def verdict_text(pred_score: float, image_threshold: float, verdict: str | None = None,
                 rule: str = ">=", ng_threshold: float | None = None) -> tuple[str, bool]:
    """(banner text, is flagged), e.g. ("NG  score 3.142 >= 2.943", True) or
    ("REVIEW  score 0.52 > 0.48", True). Without ``verdict`` it is decided from the
    one threshold (``pred_score >= image_threshold``: NG). ``rule`` is the
    comparison of the thresholds (">=" F1, ">" good parts, see `mtad.postprocess`)."""
    if verdict is None:
        verdict = "NG" if pred_score >= image_threshold else "OK"
    weak = "<" if rule == ">=" else "<="
    if verdict == "OK":
        return f"OK  score {pred_score:.4g} {weak} {image_threshold:.4g}", False
    level = (ng_threshold if verdict == "NG" and ng_threshold is not None
             and ng_threshold != image_threshold else image_threshold)
    text = f"{verdict}  score {pred_score:.4g} {rule} {level:.4g}"
    if verdict == "REVIEW" and ng_threshold is not None:
        text += f" (NG {rule} {ng_threshold:.4g})"
    return text, True


def draw_overlay(rgb: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float | None,
                 pred_score: float | None = None, image_threshold: float | None = None,
                 alpha: float = 0.5, *, outline: np.ndarray | None = None,
                 verdict: str | None = None, rule: str = ">=",
                 ng_threshold: float | None = None) -> np.ndarray:
    """The inspection picture: heat map over the photo, the predicted defect's outline,
    and the score and verdict written on it.

    Args:
        rgb: the photo, H x W x 3 uint8.
        anomaly_map: H x W float map at the photo's size (see
            `mtad.postprocess.resize_map`), in the model's score units.
        pixel_threshold: map values at or above it are the predicted defect
            (outlined, and drawn red: the heat-map scale puts it mid-ramp);
            None: no outline, the map's own range is the scale.
        pred_score: the image's score (the map's maximum at the model's size).
        image_threshold: the OK level. The banner (verdict, score, threshold) is
            drawn when both are given.
        alpha: weight of the heat map in the blend, 0..1.
        outline: H x W bool, the outline to draw (`mtad.postprocess.decide`);
            None: the boundary of the map at or above ``pixel_threshold``.
        verdict, rule, ng_threshold: the decision (`mtad.postprocess.decide`) for
            the banner; None: ``pred_score >= image_threshold`` is NG.

    Returns:
        H x W x 3 uint8.

    Raises:
        ValueError: ``rgb`` is not H x W x 3 or the map's size differs from it.
    """
    rgb = np.asarray(rgb)
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"draw_overlay: expected an H x W x 3 image, got shape {rgb.shape}")
    if anomaly_map.shape != rgb.shape[:2]:
        raise ValueError(f"draw_overlay: anomaly map {anomaly_map.shape} is not at the image's "
                         f"size {rgb.shape[:2]}; resize it with mtad.postprocess.resize_map")
    h, w = anomaly_map.shape
    out = overlay(rgb, anomaly_map, pixel_threshold, alpha)
    if outline is not None:
        out[np.asarray(outline, bool)] = OUTLINE_RGB
    elif pixel_threshold is not None:
        edge = defect_outline(anomaly_map >= pixel_threshold, outline_width(h, w))
        out[edge] = OUTLINE_RGB
    if pred_score is None or image_threshold is None:
        return out
    from PIL import ImageDraw, ImageFont

    text, _ = verdict_text(float(pred_score), float(image_threshold), verdict, rule,
                           ng_threshold)
    word = text.split()[0]
    size = banner_font_size(h, w)
    font = ImageFont.load_default(size=size)
    room = w - 2 * max(2, size // 4)
    length = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)
    if length > room:  # a narrow image: shrink the text to fit (not below 8 px)
        size = max(8, int(size * room / length))
        font = ImageFont.load_default(size=size)
    pad = max(2, size // 4)
    band = min(h, size + 2 * pad)
    out[:band] = (out[:band].astype(np.float32) * (1 - BANNER_ALPHA)).round().astype(np.uint8)
    top = min(h, 2 * band)                # the text lies in the band: draw on these rows only
    img = Image.fromarray(out[:top])
    ImageDraw.Draw(img).text((pad, pad), text, fill=VERDICT_RGB[word],
                             font=font)
    out[:top] = np.asarray(img)
    return out


def draw_decision(rgb: np.ndarray, decision, choice, pred_score: float) -> np.ndarray:
    """`draw_overlay` of one `mtad.postprocess.decide` result (its map at the photo's
    size, its outline and verdict) with the `ThresholdChoice` that made it."""
    return draw_overlay(rgb, decision.anomaly_map, choice.pixel, pred_score, choice.image,
                        outline=decision.outline, verdict=decision.verdict, rule=choice.rule,
                        ng_threshold=choice.ng)


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)
