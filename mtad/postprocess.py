"""From the model's raw output to decisions: the anomaly map at the photo's size,
and the thresholds that turn scores and maps into verdicts and defect masks.

numpy only (no torch), so that `mtad predict`, evaluation at the data's
resolution, the exported model's inferencer and the web server all share one
implementation.

A model's thresholds are a `mtad.calibration.Thresholds` (calibrated, stored
and documented there); `select_thresholds` picks the values for one prediction
and `decide` is the one decision path: (anomaly map, score, thresholds) ->
(verdict OK / REVIEW / NG, pred_label, pred_mask, outline), used by predict,
serve, the report page and `ExportedModel.classify`.
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

    ``image`` is the OK boundary and ``ng`` the NG one (see `verdict_of`);
    ``rule`` says how a score is compared with them: ">=" for F1 thresholds
    (calibrated on defects, or given on the command line: ``pred_score >=
    image`` is flagged, and ``ng == image``: no REVIEW band), ">" for good-part
    thresholds (``pred_score > image`` is flagged; ``ng`` None: never NG).
    ``pixel`` decides the predicted mask (compared by the same rule). The
    sources are short phrases for people, e.g. "class brick (test split, epoch
    20)", "pooled (calibration v2, good images)", "command line".
    """

    image: float
    pixel: float
    image_source: str
    pixel_source: str
    ng: float | None = None
    rule: str = ">="

    def as_dict(self) -> dict:
        return {"image_threshold": self.image, "ng_threshold": self.ng,
                "pixel_threshold": self.pixel, "threshold_rule": self.rule,
                "image_threshold_source": self.image_source,
                "pixel_threshold_source": self.pixel_source}


VERDICTS = ("OK", "REVIEW", "NG")


def verdict_of(pred_score: float, choice: ThresholdChoice) -> str:
    """"OK", "REVIEW" or "NG" for one image score.

    Rule ">=" (F1): flagged when ``pred_score >= image``; ">" (good parts):
    flagged when ``pred_score > image``. A flagged part is NG when it also
    passes ``ng`` by the same rule, else REVIEW; with no ``ng`` (good-part
    default) a flagged part is REVIEW. A NaN score is never OK (it is NG).
    """
    s = float(pred_score)
    if s != s:
        return "NG"
    above = (lambda t: s > t) if choice.rule == ">" else (lambda t: s >= t)
    if not above(choice.image):
        return "OK"
    return "NG" if choice.ng is not None and above(choice.ng) else "REVIEW"


@dataclass
class Decision:
    """What one image is judged to be. ``verdict``: "OK" | "REVIEW" | "NG";
    ``pred_label``: verdict != "OK"; ``pred_mask``: H x W bool (empty for OK, never
    empty otherwise); ``outline``: H x W bool, the mask's boundary band;
    ``anomaly_map``: the H x W float32 map the mask was computed on."""

    verdict: str
    pred_label: bool
    pred_mask: np.ndarray
    outline: np.ndarray
    anomaly_map: np.ndarray


def decide(anomaly_map: np.ndarray, pred_score: float, choice: ThresholdChoice,
           size: tuple[int, int] | None = None, outline_px: int | None = None) -> Decision:
    """The one decision path: (anomaly map, score, thresholds) -> verdict and defect.

    The map is first resized to ``size`` (the photo's (height, width); None keeps
    its own size), so the outline is computed where it is drawn. The predicted
    mask is the map above the pixel threshold (by ``choice.rule``) for a flagged
    part, and empty for an OK one, so the outline always agrees with the verdict;
    a flagged part whose resized map nowhere passes the pixel threshold (a
    separately calibrated pixel threshold above the image one, or a peak the
    resize smoothed) gets its peak: the pixels at the map's maximum.

    Args:
        anomaly_map: H x W float map (model size, or already at ``size``).
        pred_score: the image score (the map's maximum at the model's size).
        choice: from `select_thresholds`.
        size: the output (height, width), or None.
        outline_px: outline thickness (default: `mtad.report.drawing.outline_width`).
    """
    from mtad.report.drawing import defect_outline, outline_width

    amap = np.asarray(anomaly_map, dtype=np.float32)
    full = resize_map(amap, size) if size is not None and tuple(size) != amap.shape else amap
    verdict = verdict_of(pred_score, choice)
    if verdict == "OK":
        mask = np.zeros(full.shape, bool)
    else:
        mask = full > choice.pixel if choice.rule == ">" else full >= choice.pixel
        if not mask.any() and full.size:
            mask = full >= np.nanmax(full) if np.isfinite(full).any() else np.ones(full.shape, bool)
    width = outline_px if outline_px is not None else outline_width(*full.shape[-2:])
    return Decision(verdict, verdict != "OK", mask, defect_outline(mask, width), full)


def select_thresholds(saved, class_name: str | None = None,
                      image: float | None = None, pixel: float | None = None,
                      class_names: list[str] | None = None,
                      ng: float | None = None) -> ThresholdChoice:
    """Pick the thresholds for a prediction.

    Order for each value: the one given (``image``/``pixel``/``ng``, e.g. from
    the command line), else the class's calibrated value when ``class_name`` is
    given, else the pooled calibrated value. A given ``image`` alone is one
    threshold compared by ">=" (no REVIEW band, as before levels existed); a
    given ``ng`` moves only the NG level. A pixel threshold that could not be
    calibrated (a test split without masks) falls back to the image threshold:
    the outline then shows where the map exceeds the level that flags the image.

    Args:
        saved: a `mtad.calibration.Thresholds`, or the legacy dict a checkpoint or
            metadata.json holds (module docstring of `mtad.calibration`), or None.
        class_name: a product class of the run, or None for the pooled thresholds.
        image, pixel, ng: explicit values that override the saved ones.
        class_names: the classes the model knows (for the error message).

    Raises:
        ThresholdError: a given threshold is not finite (nan, inf); ``class_name``
            is not a class of the run (the message lists the known ones), or no
            image threshold is available: the message says why and what to do.
    """
    from mtad.calibration import Levels, Thresholds

    for flag, value in (("image threshold", image), ("pixel threshold", pixel),
                        ("NG threshold", ng)):
        if value is not None and not np.isfinite(value):
            raise ThresholdError(f"{flag} {value!r} is not a finite number")
    saved = Thresholds.coerce(saved)
    known = list(class_names or saved.known_classes())
    where = saved.where()
    pooled = saved.pooled or Levels(None)
    if class_name is not None:
        if class_name not in known:
            same = [k for k in known if k.lower() == class_name.lower()]
            near = same or difflib.get_close_matches(class_name, known, n=1)
            raise ThresholdError(f"unknown class {class_name!r}; known classes: "
                                 f"{', '.join(known) if known else '(none recorded)'}"
                                 + (f" (did you mean {near[0]!r}?)" if near else ""))
        values = saved.classes.get(class_name) or Levels(None)
        label = f"class {class_name} ({where})"
        if values.image is None and pooled.image is not None:
            values, label = pooled, f"pooled ({where}; class {class_name} has none)"
    else:
        values, label = pooled, f"pooled ({where})"

    if image is not None:
        rule, image_value, image_source = ">=", float(image), "command line"
        ng_value = float(ng) if ng is not None else image_value
    else:
        if values.image is None:
            why = saved.missing.get("image", "the run was never evaluated")
            raise ThresholdError(f"no image threshold: {why}; calibrate it on good parts with "
                                 "`mtad calibrate MODEL --good DIR`, or pass --threshold VALUE "
                                 "(a pred_score at or above it is anomalous)")
        rule, image_value, image_source = values.rule, values.image, label
        ng_value = float(ng) if ng is not None else values.ng
    good_part = values.rule == ">"     # its pixel level is its image level
    if pixel is not None:
        pixel_value, pixel_source = float(pixel), "command line"
    elif values.pixel is not None and not (good_part and image is not None):
        pixel_value, pixel_source = values.pixel, label
    elif not good_part and class_name is not None and pooled.pixel is not None:
        pixel_value = pooled.pixel
        pixel_source = f"pooled ({where}; class {class_name} has none)"
    else:
        why = saved.missing.get("pixel", "the run was never evaluated")
        if good_part:
            why = "calibrated on good parts: the outline is where the map passes the image level"
        pixel_value = image_value
        pixel_source = f"image threshold (no pixel threshold: {why})"
    return ThresholdChoice(image_value, pixel_value, image_source, pixel_source, ng_value, rule)
