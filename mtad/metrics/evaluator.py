"""Per-class evaluator fed batch by batch from a test loop; exact or streaming.

Exact mode keeps every map (compact: bool masks, maps in their float dtype)
and computes everything at the end with one sort per class.

Streaming mode keeps, per class, fixed-size histograms instead of pixels, so
its memory does not grow with the test set (image scores stay exact: they are
few). Bin edges are shared by all classes (the pooled pixel threshold needs
that) and chosen by one of two range strategies:

* adaptive (default, value_range=None): bins cover [0, hi] with hi a power of
  two, the smallest one >= the largest value seen so far. When a larger value
  arrives, hi doubles and neighbouring bins are summed pairwise, so no value is
  ever clamped and any two evaluators can be merged exactly (their edges
  coincide after folding). Needs non-negative maps. Resolution is hi / bins,
  i.e. at worst 2 x max / bins.
* fixed (value_range=(lo, hi)): bins cover [lo, hi]; values outside are clamped
  into the first/last bin and counted (reported in the method line). Use it
  when a few huge outliers would otherwise squeeze the useful range into a
  handful of bins.

Streaming metrics are the exact metrics of the maps quantised to the bins,
and results carry a rigorous per-metric bound on the difference from exact
(see curves.histogram_error_bounds).
"""
from __future__ import annotations

import math

import numpy as np

from . import curves
from .exact import (ALL_KEYS, MAD_OF, as_binary, as_stack, as_values, combine, exact_pixel_curve,
                    image_part, mean_or_none, pixel_notes, region_weights)


def _f1_threshold(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """F1-optimal threshold of image scores (`mtad.calibration.f1_threshold`, the
    thresholds' home); None without an anomalous image."""
    from mtad.calibration import f1_threshold

    return f1_threshold(np.concatenate([positive, negative]),
                        np.r_[np.ones(positive.size, bool), np.zeros(negative.size, bool)])


class _ClassState:
    """Everything kept for one class (plain attributes: pickles for merge)."""

    def __init__(self, bins: int | None):
        self.labels: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.has_pixels: bool | None = None
        self.masks: list[np.ndarray] = []  # exact mode
        self.maps: list[np.ndarray] = []
        if bins:  # streaming mode
            self.pos = np.zeros(bins, np.int64)
            self.neg = np.zeros(bins, np.int64)
            self.overlap = np.zeros(bins, np.float64)
            self.n_regions = 0


def _fold(h: np.ndarray, times: int) -> np.ndarray:
    """Double the bin width `times` times (range [0, hi] -> [0, hi * 2**times])."""
    for _ in range(min(times, 64)):
        h = np.concatenate([h.reshape(-1, 2).sum(1), np.zeros(h.size // 2, h.dtype)])
    return h


class Evaluator:
    """Accumulate (class, label, score, mask, map) batches; compute per-class metrics.

    Evaluator(streaming=False) is exact. Evaluator(streaming=True, bins=4096,
    value_range=None) uses bounded memory (see module docstring).
    """

    def __init__(self, streaming: bool = False, bins: int = 4096,
                 value_range: tuple[float, float] | None = None):
        if streaming and (bins < 2 or bins % 2):
            raise ValueError("bins must be an even number >= 2")
        if value_range is not None and not value_range[0] < value_range[1]:
            raise ValueError("value_range must be (lo, hi) with lo < hi")
        self.streaming = bool(streaming)
        self.bins = int(bins)
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self._classes: dict[str, _ClassState] = {}
        self._hi: float | None = self.value_range[1] if self.value_range else None
        self._clamped = 0

    # ------------------------------------------------------------------ feeding
    def update(self, class_names, labels, scores, masks=None, maps=None) -> None:
        """Add a batch of B items. class_names: list of B names (or one name for all);
        labels (B,) 0/1; scores (B,); masks/maps (B, H, W) or (B, 1, H, W), or None
        for image-level only; numpy arrays or torch tensors."""
        labels = as_binary(labels).reshape(-1)
        scores = as_values(scores).reshape(-1)
        n = labels.size
        names = [class_names] * n if isinstance(class_names, str) else [str(c) for c in class_names]
        if len(names) != n or scores.size != n:
            raise ValueError(f"batch sizes differ: {len(names)} names, {n} labels, {scores.size} scores")
        if (masks is None) != (maps is None):
            raise ValueError("give both masks and maps, or neither")
        if maps is not None:
            masks = as_binary(as_stack(masks, n, "masks"))
            maps = as_values(as_stack(maps, n, "maps"))
            if masks.shape != maps.shape:
                raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ")
            if self.streaming:
                self._prepare_range(maps)
        unique = list(dict.fromkeys(names))  # in order of appearance
        for name in unique:
            # a one-class batch (the usual test loop) needs no gathering copy
            sel = slice(None) if len(unique) == 1 else np.flatnonzero([c == name for c in names])
            st = self._classes.get(name)
            if st is None:
                st = self._classes[name] = _ClassState(self.bins if self.streaming else None)
            if st.has_pixels is not None and st.has_pixels != (maps is not None):
                raise ValueError(f"class {name!r}: some batches have maps and some do not")
            st.has_pixels = maps is not None
            st.labels.append(np.array(labels[sel]))
            st.scores.append(np.array(scores[sel]))
            if maps is None:
                continue
            if self.streaming:
                self._add_histograms(st, masks[sel], maps[sel])
            else:  # own copies: the caller may reuse its buffers
                st.masks.append(np.array(masks[sel]))
                st.maps.append(np.array(maps[sel]))

    def _prepare_range(self, maps: np.ndarray) -> None:
        if self.value_range is not None:
            lo, hi = self.value_range
            self._clamped += int(np.count_nonzero(maps < lo) + np.count_nonzero(maps > hi))
            return
        lo, hi = float(maps.min()), float(maps.max())
        if lo < 0:
            raise ValueError("streaming with the adaptive range needs non-negative maps; "
                             "pass value_range=(lo, hi) for other maps")
        if not math.isfinite(hi):
            raise ValueError("maps contain inf")
        if hi > 0 and (self._hi is None or hi > self._hi):
            new_hi = 2.0 ** math.ceil(math.log2(hi))
            while new_hi < hi:  # guard against log2 rounding down
                new_hi *= 2.0
            if self._hi is not None:
                self._refold(round(math.log2(new_hi / self._hi)))
            self._hi = new_hi

    def _refold(self, times: int) -> None:
        for st in self._classes.values():
            st.pos, st.neg, st.overlap = (_fold(h, times) for h in (st.pos, st.neg, st.overlap))

    def _lo_hi(self) -> tuple[float, float]:
        if self.value_range is not None:
            return self.value_range
        return 0.0, (self._hi or 1.0)  # all-zero maps so far: any hi puts them in bin 0

    def _add_histograms(self, st: _ClassState, masks: np.ndarray, maps: np.ndarray) -> None:
        lo, hi = self._lo_hi()
        b = self.bins
        v = maps.ravel()
        x = (v - lo) * (b / (hi - lo)) if lo else v * (b / hi)  # stays in the maps' float dtype
        np.clip(x, 0, b - 1, out=x)
        idx = x.astype(np.int32)  # int32 keeps the passes below cheap
        m = masks.ravel()
        # one counting pass for both kinds of pixel: bins [0, b) normal, [b, 2b) defect
        counts = np.bincount(idx + m.view(np.uint8) * np.int32(b), minlength=2 * b)
        st.neg += counts[:b]
        st.pos += counts[b:]
        w, n_regions = region_weights(masks)
        st.overlap += np.bincount(idx[m], weights=w, minlength=b)
        st.n_regions += n_regions

    # ------------------------------------------------------------------ merging
    def merge(self, other: "Evaluator") -> "Evaluator":
        """Add another evaluator's data (e.g. from another process, after pickling). Returns self."""
        if (other.streaming, other.bins if other.streaming else 0, other.value_range) != \
                (self.streaming, self.bins if self.streaming else 0, self.value_range):
            raise ValueError("can only merge evaluators with the same mode, bins and value_range")
        folds = self._cover_range_of(other) if self.streaming else 0
        self._clamped += other._clamped
        for name, ost in other._classes.items():
            st = self._classes.get(name)
            if st is None:
                st = self._classes[name] = _ClassState(self.bins if self.streaming else None)
            if st.has_pixels is not None and ost.has_pixels is not None and st.has_pixels != ost.has_pixels:
                raise ValueError(f"class {name!r}: maps in one evaluator but not in the other")
            if st.has_pixels is None:
                st.has_pixels = ost.has_pixels
            st.labels += ost.labels
            st.scores += ost.scores
            st.masks += ost.masks
            st.maps += ost.maps
            if self.streaming and ost.has_pixels:
                pos, neg, ov = (_fold(h, folds) for h in (ost.pos, ost.neg, ost.overlap))
                st.pos = st.pos + pos
                st.neg = st.neg + neg
                st.overlap = st.overlap + ov
                st.n_regions += ost.n_regions
        return self

    def _cover_range_of(self, other: "Evaluator") -> int:
        """Widen our adaptive range to cover other's; return how often other's bins must fold."""
        if self.value_range is not None or other._hi is None:
            return 0  # fixed ranges are equal; other saw only zeros (all in bin 0)
        if self._hi is None or other._hi > self._hi:
            if self._hi is not None:
                self._refold(round(math.log2(other._hi / self._hi)))
            self._hi = other._hi
        return round(math.log2(self._hi / other._hi))

    # ------------------------------------------------------------------ results
    def image_scores(self) -> dict:
        """{class: {"normal": [scores], "defective": [scores]}}, for histograms."""
        out = {}
        for name in sorted(self._classes):
            st = self._classes[name]
            labels, scores = np.concatenate(st.labels), np.concatenate(st.scores)
            out[name] = {"normal": scores[~labels].tolist(), "defective": scores[labels].tolist()}
        return out

    def method(self) -> str:
        if not self.streaming:
            return "exact"
        lo, hi = self._lo_hi()
        how = "fixed" if self.value_range is not None else "adaptive"
        text = f"streaming histogram, {self.bins} bins (approximate), {how} range [{lo:g}, {hi:g}]"
        if self._clamped:
            text += f", {self._clamped} values outside the range clamped"
        return text

    def compute(self) -> dict:
        """{"classes": {name: {metric: float or None}}, "mean": {metric: ...}, "notes":
        {name: message}, "approximate": bool, "method": str, "thresholds": {"image",
        "pixel"}, "error_bounds": {name: {metric: bound}} (streaming only)}.

        "mean" averages each metric over the classes where it is defined; its
        "mad" is the mean of the seven mean values. Thresholds are F1-optimal,
        pooled over all classes ("image", "pixel") and per class ("classes":
        {name: {"image", "pixel"}}); a value is None when its kind has no positive
        (no anomalous image, no mask pixel), and "missing" says why, in the
        format of `mtad.postprocess`.
        """
        names = sorted(self._classes)
        res = {"classes": {}, "mean": {}, "notes": {}, "approximate": self.streaming,
               "method": self.method(), "thresholds": {"image": None, "pixel": None, "classes": {}, "missing": {}},
               "error_bounds": {}}

        labels = {n: np.concatenate(self._classes[n].labels) for n in names}
        scores = {n: np.concatenate(self._classes[n].scores) for n in names}
        if names:
            all_l, all_s = np.concatenate(list(labels.values())), np.concatenate(list(scores.values()))
            res["thresholds"]["image"] = _f1_threshold(all_s[all_l], all_s[~all_l])

        pixel_curves, pooled = (self._streaming_curves(names) if self.streaming
                                else self._exact_curves(names))
        if pooled is not None and pooled.n_pos:
            res["thresholds"]["pixel"] = curves.best(curves.f1_curve(pooled), pooled)[1]

        thresholds = res["thresholds"]
        for n in names:
            thresholds["classes"][n] = {"image": _f1_threshold(scores[n][labels[n]],
                                                               scores[n][~labels[n]]),
                                        "pixel": (curves.best(curves.f1_curve(pixel_curves[n]),
                                                              pixel_curves[n])[1]
                                                  if n in pixel_curves and pixel_curves[n].n_pos
                                                  else None)}
        if thresholds["image"] is None:
            thresholds["missing"]["image"] = "the test split has no anomalous image"
        if thresholds["pixel"] is None:
            thresholds["missing"]["pixel"] = ("the test split has no ground-truth masks"
                                              if pooled is None else
                                              "the test split's masks have no defect pixel")
        for n in names:
            image, notes = image_part(labels[n], scores[n])
            pc = pixel_curves.get(n)
            notes += pixel_notes(pc)
            pixel = curves.pixel_metrics(pc) if pc is not None else None
            res["classes"][n] = combine(image, pixel)
            if notes:
                res["notes"][n] = "; ".join(notes)
            if self.streaming:  # image metrics stay exact; a mean of bounds bounds the mAD
                res["error_bounds"][n] = combine(
                    dict.fromkeys(("auroc", "ap", "f1_max"), 0.0) if image else None,
                    curves.histogram_error_bounds(pc) if pc is not None else None)
        mean = {k: mean_or_none(res["classes"][n][k] for n in names) for k in ALL_KEYS[:-1]}
        mean["mad"] = mean_or_none(mean[k] for k in MAD_OF)
        res["mean"] = mean
        return res

    def _exact_curves(self, names):
        """Per-class exact curves, plus #normal pixels at every pooled defect value."""
        with_px = [n for n in names if self._classes[n].has_pixels]
        if not with_px:
            return {}, None
        pooled_pos = np.concatenate([maps[masks] for n in with_px
                                     for masks, maps in zip(self._classes[n].masks, self._classes[n].maps)])
        if pooled_pos.size:
            t, tp, _ = curves.positive_runs(pooled_pos)
        else:
            t, tp = pooled_pos, np.zeros(0, np.int64)
        del pooled_pos
        out, pooled_ge, n_neg = {}, np.zeros(t.size, np.int64), 0
        for n in with_px:
            st = self._classes[n]
            c, ge = exact_pixel_curve(st.masks, st.maps, t)
            out[n] = c
            pooled_ge += ge
            n_neg += c.n_neg
        pooled = curves.Curve(t, np.diff(tp, prepend=0), tp, pooled_ge, pooled_ge,
                              int(tp[-1]) if tp.size else 0, n_neg)
        return out, pooled

    def _streaming_curves(self, names):
        lo, hi = self._lo_hi()
        edges = np.linspace(lo, hi, self.bins + 1)
        out, sums = {}, None
        for n in names:
            st = self._classes[n]
            if not st.has_pixels:
                continue
            out[n] = curves.curve_from_histograms(edges, st.pos, st.neg, st.overlap, st.n_regions)
            sums = [st.pos, st.neg] if sums is None else [sums[0] + st.pos, sums[1] + st.neg]
        pooled = None if sums is None else curves.curve_from_histograms(edges, *sums)
        return out, pooled
