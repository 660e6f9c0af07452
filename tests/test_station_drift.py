"""Drift monitor (mtad/station/drift.py): the tests' numbers against scipy, the false-alarm
bound on parts drawn like the calibration set, and the alarm on a shifted line."""
from fractions import Fraction
from math import comb, factorial

import numpy as np
import pytest
from scipy import stats

from mtad.station.drift import (Reference, beta_binomial_sf, ks_test, monitor, monitor_log,
                                reference_of)
from mtad.station.log import InspectionLog


def test_ks_and_binomial_match_scipy():
    rng = np.random.default_rng(0)
    for n, m, shift in ((200, 300, 0.0), (30, 300, 0.3), (200, 50, 1.0), (12, 15, 0.0)):
        a, b = rng.normal(shift, 1, n), rng.normal(0, 1, m)
        d, p = ks_test(a, b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)   # the same max over the same grid
        # ours is asymptotic with Stephens' correction, scipy's exact p-value is the
        # reference: they agree to a few hundredths at these sizes (measured: < 0.01)
        exact = stats.ks_2samp(a, b, method="exact").pvalue
        assert abs(p - exact) < 0.03
    def exact_sf(x, n, a, b):   # in rational arithmetic (integer a, b): the reference
        def beta(p, q):
            return Fraction(factorial(p - 1) * factorial(q - 1), factorial(p + q - 1))
        return float(sum(comb(n, i) * beta(i + a, n - i + b) / beta(a, b)
                         for i in range(x, n + 1)))

    for x, n, a, b in ((0, 10, 1, 300), (5, 200, 3, 298), (12, 200, 1, 300), (200, 200, 2, 5)):
        # log-gamma differences of numbers up to ~1,500, exponentiated: rounding leaves
        # ~1e-12 relative (measured 1e-13); scipy's betabinom.sf is off by 7e-5 at the last
        assert beta_binomial_sf(x, n, a, b) == pytest.approx(exact_sf(x, n, a, b), rel=1e-10)


def _calibrated(rng, n=300, k=3):
    """Good-part scores and a threshold at their k-th largest (as mtad calibrate's
    good-part rule makes it; k = 3 of 300 is a 1 % empirical false-reject rate)."""
    scores = rng.gamma(4.0, 0.05, n)
    threshold = float(np.sort(scores)[-k])
    return Reference(scores, threshold), threshold


def _window(rng, threshold, n, shift=0.0, scale=1.0):
    scores = rng.gamma(4.0, 0.05 * scale, n) + shift
    return scores, ["OK" if s <= threshold else "REVIEW" for s in scores]


def test_on_parts_drawn_like_the_calibration_set_it_flags_at_most_the_alarm_rate():
    # 600 checks of 4 classes, each with a fresh calibration set (300 good parts) and a fresh
    # window of 200 parts from the same distribution, at alarm_rate 0.05 (a larger rate than
    # the default so that 600 checks measure it). Margin: the alarm count of 600 independent
    # checks at rate 0.05 has mean 30 and sd 5.3; allowing 3 sd (46) keeps a correct monitor
    # from failing by chance (p ~ 0.002); without the correction over classes the rate
    # would be up to 4 x 0.05. Measured: 26 alarms (3 of 600 at the default 0.01).
    rng = np.random.default_rng(20)
    alarms = 0
    for _ in range(600):
        refs, recent = {}, {}
        for cls in ("a", "b", "c", "d"):
            refs[cls], threshold = _calibrated(rng)
            recent[cls] = _window(rng, threshold, 200)
        answer = monitor(recent, refs, window=200, alarm_rate=0.05)
        alarms += any(c["drift"] for c in answer["classes"])
    assert alarms <= 0.05 * 600 + 3 * np.sqrt(600 * 0.05 * 0.95)


def test_a_shifted_line_is_flagged_in_its_class_only():
    # A lighting change that moves good scores by half a standard deviation (0.05) in class
    # "b": with 200 parts against 300, KS has power ~1 at that shift; the other classes stay.
    rng = np.random.default_rng(7)
    flagged = {c: 0 for c in "abcd"}
    for _ in range(50):
        refs, recent = {}, {}
        for cls in "abcd":
            refs[cls], threshold = _calibrated(rng)
            recent[cls] = _window(rng, threshold, 200, shift=0.05 if cls == "b" else 0.0)
        for c in monitor(recent, refs)["classes"]:
            flagged[c["class_name"]] += c["drift"]
    assert flagged["b"] >= 48 and flagged["a"] + flagged["c"] + flagged["d"] <= 3


def test_more_rejections_than_calibrated_alone_raise_the_alarm():
    # Same score distribution, but 10 % of parts flagged against a calibrated 1 %: the
    # binomial test flags it even where KS cannot see a few high scores.
    ref = Reference(np.linspace(0, 1, 300), 0.99)     # flags 3 of 300: k = 4
    scores = np.linspace(0, 1, 200)
    scores[::10] = 1.0 - scores[::10] * 1e-3                # 20 of 200 above 0.99
    row = monitor({"a": (scores, ["OK"] * 200)}, {"a": ref})["classes"][0]
    assert ks_test(scores, ref.scores)[1] > 0.1 and row["drift"] is True   # KS alone: no
    assert row["not_ok_rate"] == np.mean(scores > 0.99) and row["expected_rate"] == 4 / 301


def test_the_answer_has_the_issue_schema_and_says_none_where_it_cannot_test(tmp_path):
    rng = np.random.default_rng(1)
    ref, threshold = _calibrated(rng)
    with InspectionLog(tmp_path / "i.db") as log:
        for s in rng.gamma(4.0, 0.05, 250):
            log.record(source="p.png", class_name="alpha", pred_score=s,
                       verdict="OK" if s <= threshold else "REVIEW")
        for s in (0.1, 0.2):
            log.record(source="p.png", class_name="beta", pred_score=s, verdict="OK")
        answer = monitor_log(log, {"alpha": ref, "beta": ref, "gamma": None}, window=200)
    assert set(answer) == {"classes", "alarm_rate"} and answer["alarm_rate"] == 0.01
    rows = {c["class_name"]: c for c in answer["classes"]}
    assert list(rows) == ["alpha", "beta", "gamma"]
    for c in rows.values():
        assert list(c) == ["class_name", "window", "n", "statistic", "p_value", "not_ok_rate",
                           "expected_rate", "drift"]
    assert rows["alpha"]["n"] == 200 and rows["alpha"]["drift"] is False
    assert rows["beta"]["n"] == 2 and rows["beta"]["p_value"] is None   # too few parts yet
    assert rows["gamma"]["n"] == 0 and rows["gamma"]["drift"] is None   # no calibration scores


def test_reference_of_reads_a_calibrated_class():
    class Levels:   # the attributes of mtad.calibration.Levels that the monitor reads
        scores = (0.1, 0.2, 0.3, 0.4)
        image, rule, provenance = 0.3, ">", {}

    ref = reference_of(Levels())
    assert ref.scores.tolist() == [0.1, 0.2, 0.3, 0.4]
    assert ref.k == 2 and ref.expected_rate == 2 / 5
    Levels.scores = ()
    assert reference_of(Levels()) is None
