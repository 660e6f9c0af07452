"""From the model's raw output to decisions: the anomaly map at the photo's size,
and the thresholds that turn scores and maps into verdicts and defect masks.

numpy only (no torch), so that `mtad predict`, evaluation at the data's
resolution, the exported model's inferencer and the web server all share one
implementation.

Thresholds travel with a run (the checkpoint's ``thresholds`` entry) and with an
export (metadata.json) in one form::

    {"image": 0.41, "pixel": 0.37,            # pooled over all classes (None: not calibrated)
     "source": "test split", "epoch": 20,      # where they were calibrated
     "classes": {"brick": {"image": 0.35, "pixel": 0.33}, ...},   # per class, same rule
     "missing": {"pixel": "the test split has no ground-truth masks"}}   # why a value is None

Each value is the F1-optimal threshold (image scores against image labels,
pixel values against mask pixels) on the test split at the last evaluation.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np


class ThresholdError(ValueError):
    """An unknown class, or a threshold that neither the run nor the user supplies."""


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an anomaly map to ``size`` = (height, width).

    Args:
        anomaly_map: H x W or ... x H x W float array (any leading dimensions).
        size: the output (height, width), e.g. the photo's own size.

    Returns:
        float32 array ... x height x width. Equal (to float rounding) to torch's
        ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``:
        pixel centres are aligned, as PIL aligns them when it shrank the photo to
        the model's input, so the map lies over the photo where the model looked.
    """
    a = np.asarray(anomaly_map, dtype=np.float32)
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = a.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return a.copy()

    def axis(n_in: int, n_out: int):
        # Half-pixel centres, clamped at the edges (torch's align_corners=False rule).
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0.0, None)
        lo = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        t = (x - lo).astype(np.float32)
        return lo, hi, t

    ylo, yhi, ty = axis(in_h, out_h)
    xlo, xhi, tx = axis(in_w, out_w)
    rows = a[..., ylo, :] * (1 - ty)[:, None] + a[..., yhi, :] * ty[:, None]
    out = rows[..., xlo]                  # in place from here: two full-size arrays, not five
    out *= 1 - tx
    far = rows[..., xhi]
    far *= tx
    out += far
    return out


@dataclass(frozen=True)
class ThresholdChoice:
    """The thresholds that decide one prediction, and where each came from.

    ``image`` decides the verdict (``pred_label = pred_score >= image``);
    ``pixel`` decides the predicted mask (``pred_mask = anomaly_map >= pixel``).
    The sources are short phrases for people, e.g. "class brick (test split,
    epoch 20)", "pooled (test split, epoch 20)", "command line", or, for a
    pixel threshold a run could not calibrate, "image threshold (no pixel
    threshold: the test split has no ground-truth masks)".
    """

    image: float
    pixel: float
    image_source: str
    pixel_source: str

    def as_dict(self) -> dict:
        return {"image_threshold": self.image, "pixel_threshold": self.pixel,
                "image_threshold_source": self.image_source,
                "pixel_threshold_source": self.pixel_source}


def select_thresholds(saved: dict | None, class_name: str | None = None,
                      image: float | None = None, pixel: float | None = None,
                      class_names: list[str] | None = None) -> ThresholdChoice:
    """Pick the thresholds for a prediction.

    Order for each of the two: the value given (``image``/``pixel``, e.g. from
    the command line), else the class's calibrated value when ``class_name`` is
    given, else the pooled calibrated value. A pixel threshold that could not be
    calibrated (a test split without masks) falls back to the image threshold:
    the outline then shows where the map exceeds the level that makes the image
    anomalous.

    Args:
        saved: the run's or export's thresholds (format in the module docstring), or None.
        class_name: a product class of the run, or None for the pooled thresholds.
        image, pixel: explicit values that override the saved ones.
        class_names: the classes the model knows (for the error message).

    Raises:
        ThresholdError: a given threshold is not finite (nan, inf); ``class_name``
            is not a class of the run (the message lists the known ones), or no
            image threshold is available: the message says
            why and that ``--threshold`` is enough to proceed.
    """
    for flag, value in (("image threshold", image), ("pixel threshold", pixel)):
        if value is not None and not np.isfinite(value):
            raise ThresholdError(f"{flag} {value!r} is not a finite number")
    saved = saved or {}
    known = list(class_names or saved.get("classes", {}) or [])
    where = saved.get("source", "checkpoint")
    if saved.get("epoch") is not None:
        where = f"{where}, epoch {saved['epoch']}"
    if class_name is not None:
        if class_name not in known:
            same = [k for k in known if k.lower() == class_name.lower()]
            near = same or difflib.get_close_matches(class_name, known, n=1)
            raise ThresholdError(f"unknown class {class_name!r}; known classes: "
                                 f"{', '.join(known) if known else '(none recorded)'}"
                                 + (f" (did you mean {near[0]!r}?)" if near else ""))
        values = saved.get("classes", {}).get(class_name, {})
        label = f"class {class_name} ({where})"
    else:
        values, label = saved, f"pooled ({where})"
    missing = saved.get("missing", {})

    def pick(kind: str, given: float | None) -> tuple[float | None, str]:
        if given is not None:
            return float(given), "command line"
        if values.get(kind) is not None:
            return float(values[kind]), label
        if class_name is not None and saved.get(kind) is not None:
            return float(saved[kind]), f"pooled ({where}; class {class_name} has none)"
        return None, missing.get(kind, "the run was never evaluated")

    image_value, image_source = pick("image", image)
    if image_value is None:
        raise ThresholdError(f"no image threshold: {image_source}; pass --threshold VALUE "
                             f"(a pred_score at or above it is anomalous)")
    pixel_value, pixel_source = pick("pixel", pixel)
    if pixel_value is None:
        pixel_value = image_value
        pixel_source = f"image threshold (no pixel threshold: {pixel_source})"
    return ThresholdChoice(image_value, pixel_value, image_source, pixel_source)
