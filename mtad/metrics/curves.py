"""Threshold curves built from one sort, and every metric read off them.

Why this is both exact and fast: all metrics here (AUROC, AP, F1-max,
IoU-max, AUPRO) can only change in an interesting way where the threshold
crosses a value taken by a *positive* (anomalous image / defect pixel).
Between two consecutive positive values only false positives are added, which
never raises precision, F1 or IoU, and only draws horizontal pieces of the ROC
and PRO curves (they add no area and change nothing at an interpolation
point). So the curves are evaluated at the distinct positive values only, and
the number of negatives at or above each one is a binary search into the
sorted negatives. The negatives (the vast majority of pixels) are sorted once,
by value only: `np.sort` on floats is ~10x faster than `np.argsort`.

Ties follow scikit-learn: all samples sharing a value enter the curve
together ("predict anomalous when value >= threshold"), so AUROC gives a tie
half credit and AP uses the precision at the end of the tied group.

The same `Curve` also describes a histogram (streaming mode): each bin acts as
one tied value at its lower edge, so the streaming metrics are the exact
metrics of maps quantised to the bins.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_FPR = 0.3


@dataclass
class Curve:
    """Counts at each distinct positive value ("threshold"), highest first."""

    thresholds: np.ndarray  # distinct positive values (or bin lower edges), descending
    pos_count: np.ndarray  # positives exactly at this threshold (in this bin)
    tp: np.ndarray  # positives >= threshold
    neg_ge: np.ndarray  # negatives >= threshold (at or above this bin)
    neg_gt: np.ndarray  # negatives > threshold (in higher bins)
    n_pos: int
    n_neg: int
    overlap: np.ndarray | None = None  # sum over regions of their overlap at the threshold
    n_regions: int = 0


def positive_runs(values: np.ndarray, weights: np.ndarray | None = None):
    """Distinct values (descending), cumulative counts and cumulative weights.

    Values are taken at the last index of each run of equal values, so a tied
    group always enters as a whole.
    """
    if weights is None:
        v = np.sort(values)[::-1]
        cum_w = None
    else:
        order = np.argsort(values)[::-1]
        v = values[order]
        cum_w = np.cumsum(weights[order], dtype=np.float64)
    last = np.flatnonzero(v[1:] != v[:-1])
    last = np.append(last, v.size - 1)
    tp = (last + 1).astype(np.int64)
    return v[last], tp, (None if cum_w is None else cum_w[last])


def negatives_at(neg_sorted: np.ndarray, thresholds: np.ndarray):
    """(#negatives >= t, #negatives > t) for every t, by binary search."""
    n = neg_sorted.size
    ge = n - np.searchsorted(neg_sorted, thresholds, side="left")
    gt = n - np.searchsorted(neg_sorted, thresholds, side="right")
    return ge.astype(np.int64), gt.astype(np.int64)


def common_dtype(*arrays: np.ndarray) -> list[np.ndarray]:
    """Give arrays one dtype, so searchsorted never silently copies a big array per call."""
    dt = np.result_type(*arrays)
    return [a if a.dtype == dt else a.astype(dt) for a in arrays]


def curve_from_values(pos_values, neg_sorted, pos_weights=None, n_regions=0) -> Curve:
    """Exact curve from positive values (any order) and sorted negative values."""
    pos_values, neg_sorted = common_dtype(np.asarray(pos_values), np.asarray(neg_sorted))
    if pos_values.size == 0:
        empty = np.zeros(0, np.int64)
        return Curve(pos_values[:0], empty, empty, empty, empty, 0, neg_sorted.size,
                     np.zeros(0) if pos_weights is not None else None, n_regions)
    thresholds, tp, overlap = positive_runs(pos_values, pos_weights)
    neg_ge, neg_gt = negatives_at(neg_sorted, thresholds)
    pos_count = np.diff(tp, prepend=0)
    return Curve(thresholds, pos_count, tp, neg_ge, neg_gt, int(pos_values.size),
                 int(neg_sorted.size), overlap, n_regions)


def curve_from_histograms(edges, pos_hist, neg_hist, overlap_hist=None, n_regions=0) -> Curve:
    """Curve of quantised values: bin b is one tied value at its lower edge."""
    pos_d, neg_d = pos_hist[::-1].astype(np.int64), neg_hist[::-1].astype(np.int64)
    tp = np.cumsum(pos_d)
    neg_ge = np.cumsum(neg_d)
    keep = pos_d > 0  # bins without positives only add horizontal pieces
    overlap = None
    if overlap_hist is not None:
        overlap = np.cumsum(overlap_hist[::-1], dtype=np.float64)[keep]
    return Curve(np.asarray(edges[:-1])[::-1][keep], pos_d[keep], tp[keep], neg_ge[keep],
                 (neg_ge - neg_d)[keep], int(tp[-1]) if tp.size else 0, int(neg_ge[-1]) if neg_ge.size else 0,
                 overlap, n_regions)


def _defined(c: Curve) -> bool:
    return c.n_pos > 0 and c.n_neg > 0


def auroc(c: Curve) -> float | None:
    """Mann-Whitney form of the trapezoidal ROC area: ties count one half."""
    if not _defined(c):
        return None
    below = (c.n_neg - c.neg_ge).astype(np.float64)
    tied = (c.neg_ge - c.neg_gt).astype(np.float64)
    return float(np.dot(c.pos_count, below + 0.5 * tied) / c.n_pos / c.n_neg)


def average_precision(c: Curve) -> float | None:
    """sklearn's AP: sum over thresholds of (recall increase) x precision."""
    if not _defined(c):
        return None
    precision = c.tp / (c.tp + c.neg_ge)
    return float(np.dot(c.pos_count, precision) / c.n_pos)


def f1_curve(c: Curve) -> np.ndarray:
    return 2.0 * c.tp / (c.tp + c.neg_ge + c.n_pos)


def iou_curve(c: Curve) -> np.ndarray:
    # IoU = TP / (TP + FP + FN) = TP / (FP + P)
    return c.tp / (c.neg_ge + c.n_pos).astype(np.float64)


def best(values: np.ndarray, c: Curve) -> tuple[float, float]:
    """(maximum, its threshold); among equal maxima the highest threshold."""
    k = int(np.argmax(values))
    return float(values[k]), float(c.thresholds[k])


def pro_points(c: Curve) -> tuple[np.ndarray, np.ndarray]:
    """Every corner of the PRO-vs-FPR curve, from (0, 0) to (1, last PRO).

    At each threshold the curve first runs horizontally to the FPR of the
    negatives strictly above it, then to (FPR incl. ties, new PRO): a straight
    segment when negatives tie with the defect pixels, a vertical one if not.
    """
    fpr_before = c.neg_gt / c.n_neg
    fpr_at = c.neg_ge / c.n_neg
    pro = c.overlap / c.n_regions
    pro_before = np.concatenate(([0.0], pro[:-1]))
    x = np.concatenate(([0.0], np.stack([fpr_before, fpr_at], 1).ravel(), [1.0]))
    y = np.concatenate(([0.0], np.stack([pro_before, pro], 1).ravel(), [pro[-1]]))
    return x, y


def partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under a curve with non-decreasing x, up to x_max
    (linear interpolation at x_max). The curve must reach x_max."""
    k = int(np.searchsorted(x, x_max, side="right"))  # x[:k] <= x_max
    xs, ys = x[:k], y[:k]
    if xs[-1] < x_max:
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        xs = np.append(xs, x_max)
        ys = np.append(ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)


def aupro(c: Curve, max_fpr: float = MAX_FPR) -> float | None:
    """Area under PRO vs FPR up to max_fpr, divided by max_fpr."""
    if c.overlap is None or c.n_regions == 0 or not _defined(c):
        return None
    x, y = pro_points(c)
    # clip: float64 sums of 1/size weights may end a hair away from exactly 1
    return min(max(partial_area(x, y, max_fpr) / max_fpr, 0.0), 1.0)


def pixel_metrics(c: Curve) -> dict[str, float | None]:
    if not _defined(c):
        return dict.fromkeys(("auroc", "ap", "f1_max", "aupro", "iou_max"))
    return {"auroc": auroc(c), "ap": average_precision(c), "f1_max": best(f1_curve(c), c)[0],
            "aupro": aupro(c), "iou_max": best(iou_curve(c), c)[0]}


def histogram_error_bounds(c: Curve, max_fpr: float = MAX_FPR) -> dict[str, float | None]:
    """Worst-case |streaming - exact| for a histogram curve.

    Inside a bin the order of the original values is unknown, so the exact
    curve may run anywhere inside the box the bin spans; these are the largest
    differences that box allows (rigorous, computed from the counts alone).
    """
    if not _defined(c):
        return dict.fromkeys(("auroc", "ap", "f1_max", "aupro", "iou_max"))
    P, N = c.n_pos, c.n_neg
    tied = (c.neg_ge - c.neg_gt).astype(np.float64)
    b_auroc = float(np.dot(c.pos_count, tied) / (2.0 * P * N))

    # The i-th positive of a bin (a positives above it) has precision at least
    # (a+i)/(a+i+neg_ge): concave in i, so the bin's sum is at least n times
    # the mean of its end values. It is at most tp/(tp+neg_gt) (whole bin
    # above the bin's negatives; ties may give every member the last value).
    ap_q = average_precision(c)
    tp_first = c.tp - c.pos_count + 1
    worst = (tp_first / (tp_first + c.neg_ge) + c.tp / (c.tp + c.neg_ge)) / 2.0
    ap_lo = float(np.dot(c.pos_count, worst) / P)
    ap_hi = float(np.dot(c.pos_count, c.tp / (c.tp + c.neg_gt)) / P)
    b_ap = max(ap_hi - ap_q, ap_q - ap_lo)

    # A threshold inside a bin has at most all its positives and at least
    # none of its negatives; quantised F1/IoU are reachable values (lower bounds).
    f1_hi = float(np.max(2.0 * c.tp / (c.tp + c.neg_gt + P)))
    iou_hi = float(np.max(c.tp / (c.neg_gt + P).astype(np.float64)))
    b_f1 = f1_hi - best(f1_curve(c), c)[0]
    b_iou = iou_hi - best(iou_curve(c), c)[0]

    b_pro = None
    if c.overlap is not None and c.n_regions:
        x0, x1 = c.neg_gt / N, c.neg_ge / N
        pro = c.overlap / c.n_regions
        dpro = pro - np.concatenate(([0.0], pro[:-1]))
        width = np.clip(np.minimum(x1, max_fpr) - x0, 0.0, None)
        # a bin wholly below max_fpr: the chord is mid-box, error <= half the box
        factor = np.where(x1 <= max_fpr, 0.5, 1.0)
        b_pro = float(np.sum(width * dpro * factor) / max_fpr)
    return {"auroc": b_auroc, "ap": b_ap, "f1_max": b_f1, "aupro": b_pro, "iou_max": b_iou}
