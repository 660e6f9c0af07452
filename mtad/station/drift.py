"""Drift monitor: is the line still the line the thresholds were calibrated on? (numpy only)

Per class, the scores of the last ``window`` inspections of that class (all of
them: like with like, the calibration scores are all the good parts' scores)
are compared with the good-part scores of the active calibration by two tests:

* **Kolmogorov-Smirnov, two-sample, two-sided**: ``statistic`` is
  ``D = max |F_recent - F_calibration|``; its p-value is the *asymptotic*
  Kolmogorov distribution with Stephens' small-sample correction,
  ``Q((sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D)`` with ``ne = n m / (n + m)`` and
  ``Q(x) = 2 sum_k (-1)^(k-1) exp(-2 k^2 x^2)`` (Stephens 1970; Numerical
  Recipes' ``kstwo``). Ties (identical parts) make it conservative.
* **Binomial, one-sided, with the calibrated rate's own uncertainty**: the
  number of recent parts that were not OK against what the threshold lets
  through. A threshold that flags j of the m calibration scores lies at or
  above their (j+1)-th largest, k = j + 1; a good part's chance of passing it,
  ``r``, is then at most Beta(k, m - k + 1)-distributed over calibration sets
  (order statistics), and the count of n new good parts above it is
  Binomial(n, r) given r: together Beta-Binomial(n, k, m - k + 1), whose mean
  ``n k / (m + 1)`` is the ``expected_rate`` reported (``k / (m + 1)``). The
  p-value is ``P(X >= not_ok)`` under it: exact and distribution-free for a
  threshold made from the calibration scores (or fixed), and conservative under
  ties. More rejections than calibrated is the alarm; fewer is not. Why not a
  plain binomial against the target rate: that treats the rate as known, but
  300 calibration parts at 1 % leave about 3 parts above the threshold, so the
  true rate's spread is as large as itself; measured on the false-alarm test
  below with the empirical 99 % quantile, a plain binomial raised 129 alarms in
  600 checks at a stated 0.05 (30 expected).

A class's ``p_value`` is ``min(1, 2 min(p_ks, p_binomial))`` (Bonferroni over
its two tests), and it ``drift``s when ``p_value < alarm_rate / K``, K the number
of classes checked (Bonferroni over classes): the chance that one check of all
classes raises any false alarm, when every class's parts are drawn like its
calibration set, is at most ``alarm_rate`` (default 0.01). Checks repeated on
overlapping windows are not independent; the rate is per check.

A class with fewer than `MIN_PARTS` recent parts, or with no good-part scores in
its calibration (an F1 calibration on labelled defects keeps none), has
``statistic``, ``p_value`` and ``drift`` None and does not count in K.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW = 200
DEFAULT_ALARM_RATE = 0.01
MIN_PARTS = 10


@dataclass(frozen=True)
class Reference:
    """What one class was calibrated on: its good-part ``scores`` (m of them, any order)
    and the threshold that judges a part not OK (``score > threshold``, or ``>=``
    with rule ">="; None: no threshold, no rejection test)."""

    scores: np.ndarray
    threshold: float | None
    rule: str = ">"

    def flags(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        return s > self.threshold if self.rule == ">" else s >= self.threshold

    @property
    def k(self) -> int | None:
        """1 + how many calibration scores the threshold flags: it lies at or above the
        k-th largest of them."""
        return None if self.threshold is None else int(self.flags(self.scores).sum()) + 1

    @property
    def expected_rate(self) -> float | None:
        """The mean share of good parts a threshold at the k-th largest of m flags."""
        return None if self.threshold is None else self.k / (len(self.scores) + 1)


def reference_of(levels) -> Reference | None:
    """The `Reference` of one calibrated class (an `mtad.calibration.Levels`, read by
    attribute: ``scores``, ``image``, ``rule``, ``provenance``); None without scores."""
    scores = tuple(getattr(levels, "scores", ()) or ())
    if not scores:
        return None
    return Reference(np.asarray(scores, dtype=np.float64), getattr(levels, "image", None),
                     getattr(levels, "rule", ">"))


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``max |F_a - F_b|`` (ties handled: both
    empirical CDFs are evaluated at every distinct value)."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def kolmogorov_sf(x: float) -> float:
    """``Q(x) = P(K > x)`` of the Kolmogorov distribution (the series, 100 terms; 1 for
    small x where the series converges slowly and the value is 1 to float64)."""
    if x < 0.18:
        return 1.0
    k = np.arange(1, 101, dtype=np.float64)
    q = 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k * k * x * x))
    return float(min(1.0, max(0.0, q)))


def ks_test(a, b) -> tuple[float, float]:
    """(D, asymptotic two-sided p-value with Stephens' correction) of two samples."""
    n, m = len(a), len(b)
    d = ks_statistic(a, b)
    en = math.sqrt(n * m / (n + m))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def beta_binomial_sf(x: int, n: int, a: float, b: float) -> float:
    """``P(X >= x)`` for X ~ Beta-Binomial(n, a, b), summed in log space."""
    if x <= 0:
        return 1.0
    if x > n:
        return 0.0
    i = np.arange(x, n + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma)

    def lbeta(p, q):
        return lg(p) + lg(q) - lg(p + q)

    logpmf = (math.lgamma(n + 1) - lg(i + 1) - lg(n - i + 1)
              + lbeta(i + a, n - i + b) - lbeta(np.float64(a), np.float64(b)))
    top = logpmf.max()
    return float(min(1.0, math.exp(top) * np.exp(logpmf - top).sum()))


def check_class(scores, verdicts, reference: Reference | None) -> dict:
    """The tests of one class (no decision yet): n, statistic, p-value, the not-OK share
    and the expected one. Not OK is judged by the reference's threshold (like with
    like, when parts were logged under an earlier calibration); the logged
    ``verdicts`` count without one."""
    scores = np.asarray(scores, dtype=np.float64)
    n = int(scores.size)
    if reference is not None and reference.threshold is not None:
        not_ok = int((~(scores <= reference.threshold) if reference.rule == ">"
                      else ~(scores < reference.threshold)).sum())   # NaN: not OK
    else:
        not_ok = sum(v != "OK" for v in verdicts)
    out = {"n": n, "statistic": None, "p_value": None,
           "not_ok_rate": (not_ok / n) if n else None,
           "expected_rate": reference.expected_rate if reference else None}
    finite = scores[np.isfinite(scores)]
    if reference is None or n < MIN_PARTS or finite.size < MIN_PARTS:
        return out
    d, p_ks = ks_test(finite, reference.scores)
    m, k = len(reference.scores), reference.k
    p_bin = beta_binomial_sf(not_ok, n, k, m - k + 1) if k is not None and k <= m else 1.0
    out.update(statistic=d, p_value=min(1.0, 2.0 * min(p_ks, p_bin)))
    return out


def monitor(recent: dict, references: dict, window: int = DEFAULT_WINDOW,
            alarm_rate: float = DEFAULT_ALARM_RATE) -> dict:
    """The answer of ``GET /api/monitor``.

    Args:
        recent: {class_name: (scores, verdicts)} of the last ``window`` parts of each
            class, oldest first (class_name None: parts judged with pooled thresholds).
        references: {class_name: Reference | None} from the active calibration.
        window: the window size asked for (reported; ``recent`` is already cut to it).
        alarm_rate: the false-alarm rate of one check over all classes, in (0, 1).

    Returns:
        ``{"classes": [{"class_name", "window", "n", "statistic", "p_value",
        "not_ok_rate", "expected_rate", "drift"}, ...], "alarm_rate"}``; classes in
        the order of ``recent`` then the calibrated ones not seen yet.
    """
    if not 0.0 < alarm_rate < 1.0:
        raise ValueError(f"alarm rate {alarm_rate} is outside (0, 1)")
    names = list(recent) + [c for c in references if c not in recent]
    checks = []
    for name in names:
        scores, verdicts = recent.get(name, ((), ()))
        checks.append({"class_name": name, "window": int(window),
                       **check_class(scores, verdicts, references.get(name))})
    tested = [c for c in checks if c["p_value"] is not None]
    for c in checks:
        c["drift"] = None if c["p_value"] is None else bool(c["p_value"] < alarm_rate / len(tested))
    return {"classes": checks, "alarm_rate": alarm_rate}


def monitor_log(log, references: dict, window: int = DEFAULT_WINDOW,
                alarm_rate: float = DEFAULT_ALARM_RATE) -> dict:
    """`monitor` over an `mtad.station.log.InspectionLog`: every class in the log and in
    ``references``, the last ``window`` parts of each."""
    seen = log.class_names()
    names = seen + [c for c in references if c not in seen]
    return monitor({c: log.recent_scores(c, window) for c in names}, references, window,
                   alarm_rate)
