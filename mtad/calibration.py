"""A model's thresholds as one object: calibrated, selected, stored (numpy only).

Two ways to calibrate, one object (`Thresholds`) for both:

* **F1 on labelled defects** (`f1_threshold`, `Thresholds.from_legacy`): the
  image threshold maximising F1 on a test split with anomalous images; a part
  is flagged when ``pred_score >= threshold`` (every distinct score is a
  candidate, the score itself included). One level: the REVIEW band is empty,
  so a flagged part is NG. Pixel thresholds come from the pixel F1 curves of
  the evaluator (`mtad.metrics`).
* **Good parts at a target false-reject rate** (`good_part_threshold`,
  `calibrate_good`): with n good scores, a target rate ``alpha`` and a
  confidence ``c``, the threshold is the k-th largest score for the largest k
  with ``P(Binomial(n, alpha) <= k - 1) <= 1 - c``, and a part is flagged when
  its score is strictly ``>`` the threshold (tied scores, e.g. identical good
  parts, never flag each other). Distribution-free: for any score
  distribution, the probability (over the calibration sample) that a new good
  part is flagged with probability above ``alpha`` is at most ``1 - c``
  (order statistics: the true (1 - alpha)-quantile is exceeded by fewer than k
  of n good scores with probability ``P(Binomial(n, alpha) <= k - 1)``; ties
  only make it more conservative). k = 1 (the largest score) needs
  ``(1 - alpha)^n <= 1 - c``: 299 images for 1 % at 95 %, 2,995 for 0.1 %.
  With fewer, the largest score is used and the best rate the images can
  guarantee, ``1 - (1 - c)^(1/n)``, is reported.

Each class has two levels. ``image`` (REVIEW or worse above it) and ``ng`` (NG
above it). From good parts, ``image`` comes from ``--false-reject`` and ``ng``
from ``--ng-false-reject`` (default none: nothing is rejected without a person).
With both, each level is calibrated at confidence ``1 - (1 - c) / 2``, so that
both hold jointly with confidence ``c`` (Bonferroni). In this mode the pixel
threshold equals the image level, so the outline agrees with the verdict.

Storage, readable without torch: ``calibration.json`` beside ``last.pt`` in a
run folder, or inside an export folder::

    {"format": "mtad-calibration", "format_version": 1, "active": 2,
     "versions": [
       {"version": 1, "created": "2026-12-02T01:02:03Z", "checkpoint_sha256": "ab12...",
        "method": "good-part quantile" | "F1 on labelled defects",
        "source": "where the images came from",
        "pooled": LEVELS, "classes": {"brick": LEVELS, ...},
        "missing": {"pixel": "why a value is None"},
        "request": {"good": [folders], "class_name", "false_reject", "confidence",
                    "ng_false_reject"} (good-part versions made by `mtad calibrate`)}, ...]}

    LEVELS = {"image_threshold": 0.41, "ng_threshold": 0.55 | null,
              "pixel_threshold": 0.41 | null, "rule": ">" | ">=",
              "provenance": {"method", "n_images", "source", "date", "checkpoint_sha256",
                             "target_false_reject", "achieved_false_reject" (the upper
                             confidence bound of the rate at this threshold), "confidence",
                             "empirical_false_reject", "images_needed",
                             "ng_target_false_reject", "ng_achieved_false_reject",
                             "ng_confidence", "f1_pixel_threshold" (the earlier
                             F1 pixel level from defect masks, when there was one)},
              "scores": [the calibration scores, ascending]}

Versions are numbered 1, 2, ...; a new one is appended (earlier ones are never
changed) and the whole file is replaced atomically; exactly one is active. A
version made for another checkpoint (its SHA-256) is never applied. A run or
export without calibration.json uses the thresholds its checkpoint or
metadata.json holds (the legacy F1 calibration: ``{"image", "pixel", "source",
"epoch", "classes": {name: {"image", "pixel"}}, "missing"}``).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mtad.files import write_atomic

CALIBRATION_FILE = "calibration.json"
FORMAT = "mtad-calibration"
FORMAT_VERSION = 1
GOOD_METHOD = "good-part quantile"
F1_METHOD = "F1 on labelled defects"


class CalibrationError(ValueError):
    """Bad calibration input (a target or confidence outside (0, 1), no scores, an
    unknown version) or a calibration.json that cannot be read."""


# ------------------------------------------------------------------ the statistics
def _binomial_cdfs(n: int, p: float) -> np.ndarray:
    """P(Binomial(n, p) <= j) for j = 0 .. n - 1, float64, numpy alone (the torch-free
    install has no scipy): log pmf(j + 1) = log pmf(j) + log((n - j) / (j + 1)) +
    log(p / (1 - p)), summed, exponentiated, accumulated. Relative error ~1e-12 for n
    up to 1e6 (rounding of the running sum of logs)."""
    j = np.arange(n - 1, dtype=np.float64)
    steps = np.log((n - j) / (j + 1)) + (math.log(p) - math.log1p(-p))
    logpmf = np.concatenate([[n * math.log1p(-p)], n * math.log1p(-p) + np.cumsum(steps)])
    return np.minimum(np.cumsum(np.exp(logpmf)), 1.0)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k) (see `_binomial_cdfs`)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return float(_binomial_cdfs(n, p)[k])


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 < value < 1.0):
        raise CalibrationError(f"{name} {value:g} is outside (0, 1)")
    return value


def images_needed(alpha: float, confidence: float) -> int:
    """Smallest n for which the largest of n good scores guarantees a false-reject
    rate <= ``alpha`` with that confidence: ``(1 - alpha)^n <= 1 - confidence``
    (299 for 1 % at 95 %, 2,995 for 0.1 % at 95 %)."""
    alpha, confidence = _check_rate("false-reject", alpha), _check_rate("confidence", confidence)
    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-alpha)))
    while n > 1 and (n - 1) * math.log1p(-alpha) <= math.log1p(-confidence):
        n -= 1                                      # guard against rounding of the ratio
    while n * math.log1p(-alpha) > math.log1p(-confidence):
        n += 1
    return n


def rate_bound(n: int, k: int, confidence: float) -> float:
    """The smallest rate ``a`` the k-th largest of n scores guarantees at that
    confidence: ``P(Binomial(n, a) <= k - 1) <= 1 - confidence`` (bisection; for
    k = 1 it is ``1 - (1 - confidence)^(1/n)``)."""
    if k == 1:
        return 1.0 - (1.0 - confidence) ** (1.0 / n)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binomial_cdf(k - 1, n, mid) <= 1 - confidence:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class GoodPartLevel:
    """One good-part threshold: ``threshold`` (flag when a score is > it), ``k`` (its
    rank from the top), the target, the guaranteed ``achieved`` rate at
    ``confidence``, the share of calibration scores above it, and
    ``images_needed`` for the target (more than n when the target was not reachable)."""

    threshold: float
    k: int
    n: int
    target: float
    achieved: float
    confidence: float
    empirical: float
    images_needed: int

    @property
    def reached(self) -> bool:
        return self.achieved <= self.target * (1 + 1e-12)


def good_part_threshold(scores, alpha: float, confidence: float) -> GoodPartLevel:
    """Threshold from good-part scores (the rule in the module docstring).

    Args:
        scores: n >= 1 finite image scores of good parts (any shape, flattened).
        alpha: the target false-reject rate, in (0, 1).
        confidence: in (0, 1).

    Raises:
        CalibrationError: a target or confidence outside (0, 1), no score, or a
            score that is not finite.
    """
    alpha, confidence = _check_rate("false-reject", alpha), _check_rate("confidence", confidence)
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))[::-1]
    n = int(s.size)
    if n == 0:
        raise CalibrationError("no good-part scores to calibrate on")
    if not np.isfinite(s).all():
        raise CalibrationError("a good-part score is not finite")
    # P(Bin(n, alpha) <= k - 1) grows with k: the largest k where it stays <= 1 - c
    k = int(np.searchsorted(_binomial_cdfs(n, alpha), 1 - confidence, side="right"))
    need = images_needed(alpha, confidence)
    if k == 0:                   # too few images: the largest score, at the best rate it gives
        k = 1
    threshold = float(s[k - 1])
    achieved = rate_bound(n, k, confidence)
    return GoodPartLevel(threshold, k, n, alpha, achieved, confidence,
                         float((s > threshold).sum() / n), need)


def f1_threshold(scores, labels) -> float | None:
    """F1-optimal image threshold: flagging ``score >= t`` gives the best F1 over every
    distinct score; among equal F1 the highest t. None without an anomalous image.
    (The same rule as `mtad.metrics.f1_max_threshold`, numpy only.)"""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if not y.any():
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]          # the end of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    f1 = 2 * tp / (tp + fp + y.sum())
    best = np.flatnonzero(f1 == f1.max())[0]     # highest threshold among the maxima
    return float(s[last][best])


# ------------------------------------------------------------------ the object
@dataclass(frozen=True)
class Levels:
    """One class's (or the pooled) thresholds.

    ``image``: at or below it (rule ">") / below it (rule ">=") a part is OK;
    ``ng``: above it (">") / at or above it (">=") a part is NG; between the two
    REVIEW. None: no NG level (good-part default). ``pixel``: anomaly-map level of
    the predicted defect (None: not calibrated). ``rule``: ">" for good-part
    thresholds, ">=" for F1 thresholds.
    """

    image: float | None
    ng: float | None = None
    pixel: float | None = None
    rule: str = ">="
    provenance: dict = field(default_factory=dict)
    scores: tuple = ()

    def to_json(self) -> dict:
        return {"image_threshold": self.image, "ng_threshold": self.ng,
                "pixel_threshold": self.pixel, "rule": self.rule,
                "provenance": dict(self.provenance), "scores": list(self.scores)}

    @classmethod
    def from_json(cls, d: dict) -> "Levels":
        rule = d.get("rule", ">=")
        if rule not in (">", ">="):
            raise CalibrationError(f"unknown threshold rule {rule!r} (allowed: '>', '>=')")
        num = (lambda v: None if v is None else float(v))
        return cls(num(d.get("image_threshold")), num(d.get("ng_threshold")),
                   num(d.get("pixel_threshold")), rule, dict(d.get("provenance") or {}),
                   tuple(float(v) for v in d.get("scores") or ()))


@dataclass(frozen=True)
class Thresholds:
    """A model's thresholds: pooled and per class, one calibration version.

    Build one with `from_legacy` (a checkpoint's or metadata.json's dict: the
    evaluator's F1 values, `mtad.metrics`) or `calibrate_good`; pick the
    values for a prediction with `select`; store with `CalibrationStore`.
    """

    pooled: Levels | None
    classes: dict
    missing: dict = field(default_factory=dict)
    source: str = "checkpoint"
    method: str = F1_METHOD
    version: int | None = None
    created: str | None = None
    checkpoint_sha256: str | None = None
    epoch: int | None = None
    request: dict = field(default_factory=dict)
    """How `mtad calibrate` was called (``good``: the folders, absolute; ``class_name``,
    ``false_reject``, ``confidence``, ``ng_false_reject``), so that `mtad finetune`
    can calibrate the new run the same way; empty for F1 thresholds."""

    # -- construction
    @classmethod
    def from_legacy(cls, saved: dict | None) -> "Thresholds":
        """The thresholds a checkpoint or metadata.json holds (format in the module
        docstring: the legacy F1 calibration, ``score >= threshold``)."""
        saved = saved or {}
        prov = {"method": F1_METHOD, "source": saved.get("source", "checkpoint"),
                "epoch": saved.get("epoch")}

        def levels(d):
            image = d.get("image")
            image = None if image is None else float(image)
            pixel = None if d.get("pixel") is None else float(d["pixel"])
            return Levels(image, image, pixel, ">=", prov)

        return cls(levels(saved), {n: levels(v or {}) for n, v in (saved.get("classes") or {}).items()},
                   dict(saved.get("missing") or {}), saved.get("source", "checkpoint"),
                   F1_METHOD, epoch=saved.get("epoch"))

    @classmethod
    def coerce(cls, value) -> "Thresholds":
        """A Thresholds unchanged; a legacy dict or None through `from_legacy`."""
        return value if isinstance(value, Thresholds) else cls.from_legacy(value)

    def to_legacy(self) -> dict:
        """The checkpoint / metadata.json dict of these values (image and pixel levels)."""
        pooled = self.pooled or Levels(None)
        return {"image": pooled.image, "pixel": pooled.pixel, "source": self.source,
                "epoch": self.epoch, "missing": dict(self.missing),
                "classes": {n: {"image": l.image, "pixel": l.pixel} for n, l in self.classes.items()}}

    # -- selection
    def known_classes(self) -> list[str]:
        return list(self.classes)

    def where(self) -> str:
        text = self.source or "checkpoint"
        if self.version is not None:
            text = f"calibration v{self.version}, {text}"
        if self.epoch is not None:
            text = f"{text}, epoch {self.epoch}"
        return text

    # -- (de)serialisation of one version
    def to_json(self) -> dict:
        return {"version": self.version, "created": self.created,
                "checkpoint_sha256": self.checkpoint_sha256, "method": self.method,
                "source": self.source, "epoch": self.epoch,
                "pooled": self.pooled.to_json() if self.pooled else None,
                "classes": {n: l.to_json() for n, l in self.classes.items()},
                "missing": dict(self.missing),
                **({"request": dict(self.request)} if self.request else {})}

    @classmethod
    def from_json(cls, d: dict) -> "Thresholds":
        try:
            return cls(Levels.from_json(d["pooled"]) if d.get("pooled") else None,
                       {str(n): Levels.from_json(v) for n, v in (d.get("classes") or {}).items()},
                       dict(d.get("missing") or {}), str(d.get("source") or ""),
                       str(d.get("method") or ""), int(d["version"]) if d.get("version") else None,
                       d.get("created"), d.get("checkpoint_sha256"), d.get("epoch"),
                       dict(d.get("request") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"not a calibration version ({type(exc).__name__}: {exc})") \
                from None


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _good_levels(scores, alpha, confidence, ng_alpha, source, date, sha) -> Levels:
    """Levels of one class (or pooled) from its good scores."""
    both = ng_alpha is not None
    each = 1 - (1 - confidence) / 2 if both else confidence
    review = good_part_threshold(scores, alpha, each)
    prov = {"method": GOOD_METHOD, "n_images": review.n, "source": source, "date": date,
            "checkpoint_sha256": sha, "target_false_reject": alpha,
            "achieved_false_reject": review.achieved, "confidence": each,
            "joint_confidence": confidence, "empirical_false_reject": review.empirical,
            "images_needed": images_needed(alpha, each), "rank": review.k}
    ng = None
    if both:
        level = good_part_threshold(scores, ng_alpha, each)
        ng = level.threshold
        prov.update(ng_target_false_reject=ng_alpha, ng_achieved_false_reject=level.achieved,
                    ng_confidence=each, ng_images_needed=images_needed(ng_alpha, each),
                    ng_empirical_false_reject=level.empirical)
    return Levels(review.threshold, ng, review.threshold, ">", prov,
                  tuple(float(v) for v in np.sort(np.asarray(scores, np.float64).reshape(-1))))


def calibrate_good(scores_by_class: dict, alpha: float = 0.01, confidence: float = 0.95,
                   ng_alpha: float | None = None, source: str = "good images",
                   checkpoint_sha256: str | None = None, previous: Thresholds | None = None,
                   known_classes: list[str] | None = None) -> Thresholds:
    """Good-part calibration of the classes in ``scores_by_class`` ({name: scores});
    the pooled levels from all of them together. Classes not given keep their
    levels from ``previous`` (when it has them).

    Raises:
        CalibrationError: a rate or confidence outside (0, 1), ``ng_alpha`` not below
            ``alpha``, a class with no score, or a class not in ``known_classes``.
    """
    alpha = _check_rate("--false-reject", alpha)
    confidence = _check_rate("--confidence", confidence)
    if ng_alpha is not None:
        ng_alpha = _check_rate("--ng-false-reject", ng_alpha)
        if ng_alpha >= alpha:
            raise CalibrationError(f"--ng-false-reject {ng_alpha:g} must be below "
                                   f"--false-reject {alpha:g} (NG is the stricter level)")
    if not scores_by_class:
        raise CalibrationError("no good images to calibrate on")
    for name, s in scores_by_class.items():
        if known_classes is not None and name not in known_classes:
            raise CalibrationError(f"class {name!r} is not a class of the model; known classes: "
                                   f"{', '.join(known_classes) or '(none recorded)'}")
        if np.asarray(s).size == 0:
            raise CalibrationError(f"no good images for class {name!r}")
    date = now_utc()
    classes = dict(previous.classes) if previous is not None else {}
    for name, s in scores_by_class.items():
        level = _good_levels(s, alpha, confidence, ng_alpha, source, date, checkpoint_sha256)
        old = classes.get(name)
        if old is not None and old.rule == ">=" and old.pixel is not None:
            # the F1 pixel threshold from defect masks stays available (--pixel-threshold)
            level = replace(level, provenance={**level.provenance, "f1_pixel_threshold": old.pixel})
        classes[name] = level
    pooled = _good_levels(np.concatenate([np.asarray(s, np.float64).reshape(-1)
                                          for s in scores_by_class.values()]),
                          alpha, confidence, ng_alpha, source, date, checkpoint_sha256)
    return Thresholds(pooled, classes, {}, source, GOOD_METHOD, None, date, checkpoint_sha256)


# ------------------------------------------------------------------ calibration.json
def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside ``path``, fsync, rename over it."""
    write_atomic(path, lambda handle: json.dump(data, handle, indent=1), "w")


class CalibrationStore:
    """The calibration.json of a run folder or an export folder.

    Args:
        folder: the run folder (beside last.pt) or the export folder.
        checkpoint_sha256: the SHA-256 of the model's checkpoint; versions made for
            another one are listed but never applied.
    """

    def __init__(self, folder: str | Path, checkpoint_sha256: str | None):
        self.folder = Path(folder)
        self.path = self.folder / CALIBRATION_FILE
        self.sha = checkpoint_sha256

    def read(self) -> dict:
        """The file's content ({"active": N | None, "versions": [...]}); an empty one
        when the file does not exist.

        Raises:
            CalibrationError: the file exists but is not a valid calibration.json.
        """
        if not self.path.is_file():
            return {"format": FORMAT, "format_version": FORMAT_VERSION, "active": None,
                    "versions": []}
        try:
            data = json.loads(self.path.read_text())
            versions = data["versions"]
            if data.get("format") != FORMAT or not isinstance(versions, list):
                raise ValueError("not an mtad calibration file")
            for v in versions:
                Thresholds.from_json(v)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibrationError(f"{self.path}: not a valid calibration file "
                                   f"({type(exc).__name__}: {exc})") from None
        return data

    def versions(self) -> list[Thresholds]:
        return [Thresholds.from_json(v) for v in self.read()["versions"]]

    def applicable(self, t: Thresholds) -> bool:
        return self.sha is None or t.checkpoint_sha256 == self.sha

    def active(self) -> Thresholds | None:
        """The active version when it was made for this checkpoint, else None."""
        data = self.read()
        for v in data["versions"]:
            if v.get("version") == data.get("active"):
                t = Thresholds.from_json(v)
                return t if self.applicable(t) else None
        return None

    def add(self, t: Thresholds, activate: bool = True) -> Thresholds:
        """Append ``t`` as the next version (earlier versions unchanged), atomically.
        Returns it with its version number."""
        data = self.read()
        number = max([int(v["version"]) for v in data["versions"]] or [0]) + 1
        t = replace(t, version=number, created=t.created or now_utc())
        data["versions"].append(t.to_json())
        if activate or data.get("active") is None:
            data["active"] = number
        write_json_atomic(self.path, data)
        return t

    def activate(self, number: int) -> Thresholds:
        """Make version ``number`` the active one.

        Raises:
            CalibrationError: no such version, or it was made for another checkpoint.
        """
        data = self.read()
        for v in data["versions"]:
            if v.get("version") == number:
                t = Thresholds.from_json(v)
                if not self.applicable(t):
                    raise CalibrationError(
                        f"calibration version {number} was made for another checkpoint "
                        f"(SHA-256 {str(t.checkpoint_sha256)[:12]}..., this one "
                        f"{str(self.sha)[:12]}...); it cannot be applied")
                data["active"] = number
                write_json_atomic(self.path, data)
                return t
        known = ", ".join(str(v.get("version")) for v in data["versions"]) or "none"
        raise CalibrationError(f"no calibration version {number} in {self.path} "
                               f"(versions: {known})")

    def describe(self) -> list[str]:
        """One line per version, for `mtad info`."""
        data = self.read()
        lines = []
        for v in data["versions"]:
            t = Thresholds.from_json(v)
            mark = "*" if v.get("version") == data.get("active") else " "
            other = "" if self.applicable(t) else "  (another checkpoint: never applied)"
            p = (t.pooled.provenance if t.pooled else {}) or {}
            rate = ""
            if t.method == GOOD_METHOD and p:
                rate = (f", false-reject <= {p.get('achieved_false_reject', 0):.3g} at "
                        f"{p.get('joint_confidence', p.get('confidence', 0)):.3g} confidence "
                        f"(target {p.get('target_false_reject', 0):.3g})")
                if p.get("ng_target_false_reject") is not None:
                    rate += f", NG target {p['ng_target_false_reject']:.3g}"
            lines.append(f"{mark} v{t.version}  {t.created}  {t.method}, classes "
                         f"{', '.join(t.classes) or '-'}, {t.source}{rate}{other}")
        return lines


def model_thresholds(folder: str | Path, legacy: dict | None, checkpoint_sha256, warn=None
                     ) -> Thresholds:
    """The thresholds a model applies: the active calibration.json version of its folder
    when there is one for this checkpoint, else the legacy ones its checkpoint or
    metadata.json holds. ``checkpoint_sha256`` may be a callable (hashing is
    done only when a calibration.json exists). ``warn(msg)`` hears about an
    active version made for another checkpoint."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return Thresholds.from_legacy(legacy)
    sha = checkpoint_sha256() if callable(checkpoint_sha256) else checkpoint_sha256
    store = CalibrationStore(folder, sha)
    t = store.active()
    if t is None:
        if store.read().get("active") is not None and warn is not None:
            warn(f"{path}: the active calibration was made for another checkpoint; "
                 "using the checkpoint's own thresholds")
        return Thresholds.from_legacy(legacy)
    return t
