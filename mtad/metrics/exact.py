"""Exact metrics for one class, and the input handling shared by the evaluator."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import curves
from .curves import Curve

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
           "pixel_f1_max", "pixel_aupro", "pixel_iou_max")
MAD_OF = METRICS[:7]  # mAD is the mean of the first seven (IoU-max is not part of it)
ALL_KEYS = METRICS + ("mad",)

# 8-connectivity inside each image, no connection between stacked images, so a
# whole (n, H, W) stack is labelled in one call with every image separate.
_STACK_8_CONNECTED = np.zeros((3, 3, 3), bool)
_STACK_8_CONNECTED[1] = True


def to_numpy(x) -> np.ndarray:
    """numpy view of a numpy array / torch tensor / sequence (torch is not imported)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # half / bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def as_values(x) -> np.ndarray:
    """Scores/maps as float32 or float64 (kept as given when already so); NaN is an error."""
    a = to_numpy(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32 if a.dtype == np.float16 else np.float64)
    if np.isnan(a).any():
        raise ValueError("scores/maps contain NaN")
    return a


def as_binary(x) -> np.ndarray:
    """0/1 (or 0/255, or bool) labels and masks to bool."""
    a = to_numpy(x)
    return a if a.dtype == bool else a > 0.5


def as_stack(x, n: int, what: str) -> np.ndarray:
    """(n, H, W) or (n, 1, H, W) -> (n, H, W)."""
    a = to_numpy(x)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2 and n == 1:
        a = a[None]
    if a.ndim != 3 or a.shape[0] != n:
        raise ValueError(f"{what} must be ({n}, H, W) or ({n}, 1, H, W), got {tuple(a.shape)}")
    return a


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """1/(size of its region) for every defect pixel (in masks.ravel() order of
    the True pixels), and the number of regions: each region's weights sum to 1,
    so a cumulative sum over thresholds is the sum of region overlaps."""
    regions, n_regions = ndimage.label(masks, structure=_STACK_8_CONNECTED)
    ids = regions.ravel()[masks.ravel()]
    sizes = np.bincount(ids, minlength=n_regions + 1)
    return 1.0 / sizes[ids], int(n_regions)


def split_pixels(masks_chunks, maps_chunks):
    """Defect values, their region weights, #regions and normal values, over chunks
    that may differ in H x W."""
    pos, weights, neg, n_regions = [], [], [], 0
    for masks, maps in zip(masks_chunks, maps_chunks):
        w, r = region_weights(masks)
        flat_m, flat_v = masks.ravel(), maps.ravel()
        pos.append(flat_v[flat_m])
        neg.append(flat_v[~flat_m])
        weights.append(w)
        n_regions += r
    cat = np.concatenate
    return cat(pos), cat(weights), n_regions, cat(neg)


def combine(image: dict | None, pixel: dict | None) -> dict:
    """Assemble the metric dict; mAD is the mean of the defined first seven."""
    out = dict.fromkeys(ALL_KEYS)
    for prefix, part in (("image", image), ("pixel", pixel)):
        for k, v in (part or {}).items():
            name = f"{prefix}_{k}"
            if name in out:
                out[name] = v
    out["mad"] = mean_or_none([out[k] for k in MAD_OF])
    return out


def mean_or_none(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def image_part(labels: np.ndarray, scores: np.ndarray) -> tuple[dict | None, list[str]]:
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        which = "anomalous" if n_pos == 0 else "normal"
        return None, [f"no {which} test image: image-level metrics undefined (n/a)"]
    c = curves.curve_from_values(scores[labels], np.sort(scores[~labels]))
    return {"auroc": curves.auroc(c), "ap": curves.average_precision(c),
            "f1_max": curves.best(curves.f1_curve(c), c)[0]}, []


def pixel_notes(c: Curve | None) -> list[str]:
    if c is None:
        return ["no anomaly maps / masks given: pixel-level metrics n/a"]
    if c.n_pos == 0:
        return ["no anomalous pixel in the ground-truth masks: pixel-level metrics undefined (n/a)"]
    if c.n_neg == 0:
        return ["no normal pixel in the ground-truth masks: pixel-level metrics undefined (n/a)"]
    return []


def exact_pixel_curve(masks_chunks, maps_chunks, pooled_thresholds=None):
    """Exact pixel curve of one class; optionally also #normal pixels >= each pooled threshold."""
    pos, weights, n_regions, neg = split_pixels(masks_chunks, maps_chunks)
    neg = np.sort(neg)  # the one big sort
    c = curves.curve_from_values(pos, neg, weights, n_regions)
    pooled_ge = None
    if pooled_thresholds is not None:
        t, neg = curves.common_dtype(pooled_thresholds, neg)
        pooled_ge = curves.negatives_at(neg, t)[0]
    return c, pooled_ge


def compute_metrics(labels, scores, masks=None, maps=None) -> dict:
    """Exact metrics of ONE class.

    labels (N,) 0/1, scores (N,), masks (N, H, W) 0/1, maps (N, H, W); numpy or torch.
    Returns the eight metrics and "mad" (python floats in [0, 1], or None where
    undefined) plus "note": a human-readable reason for any None, else None.
    masks/maps may be None for image-level evaluation only.
    """
    labels = as_binary(labels).reshape(-1)
    scores = as_values(scores).reshape(-1)
    if labels.size != scores.size:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    image, notes = image_part(labels, scores)
    pixel_c = None
    if masks is not None or maps is not None:
        if masks is None or maps is None:
            raise ValueError("give both masks and maps, or neither")
        masks = as_binary(as_stack(masks, labels.size, "masks"))
        maps = as_values(as_stack(maps, labels.size, "maps"))
        if masks.shape != maps.shape:
            raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ")
        pixel_c, _ = exact_pixel_curve([masks], [maps])
    notes += pixel_notes(pixel_c)
    out = combine(image, curves.pixel_metrics(pixel_c) if pixel_c is not None else None)
    out["note"] = "; ".join(notes) or None
    return out


def f1_max_threshold(labels, scores) -> tuple[float, float]:
    """(best F1, threshold): predicting anomalous when score >= threshold gives best F1.

    Works for image scores and for flattened pixel maps (any shape; labels and
    scores are flattened together). Every distinct score is tried; among equal
    F1 values the highest threshold wins. Raises ValueError without positives.
    """
    labels = as_binary(labels).reshape(-1)
    scores = as_values(scores).reshape(-1)
    if labels.size != scores.size:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not labels.any():
        raise ValueError("no positive label: F1 is undefined")
    c = curves.curve_from_values(scores[labels], np.sort(scores[~labels]))
    return curves.best(curves.f1_curve(c), c)
