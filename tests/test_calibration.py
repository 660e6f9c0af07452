"""Thresholds from good parts: the binomial guarantee, the levels, calibration.json,
and the one decision path (no model needed)."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from mtad.calibration import (CALIBRATION_FILE, CalibrationError, CalibrationStore, Thresholds,
                              binomial_cdf, calibrate_good, f1_threshold, good_part_threshold,
                              images_needed, model_thresholds, rate_bound)
from mtad.metrics import f1_max_threshold
from mtad.postprocess import ThresholdError, decide, select_thresholds, verdict_of


def test_images_needed_for_the_documented_targets():
    assert images_needed(0.01, 0.95) == 299
    assert images_needed(0.001, 0.95) == 2995
    # the rule behind it: the largest of n scores guarantees alpha iff (1 - alpha)^n <= 1 - c
    assert 0.99 ** 299 <= 0.05 < 0.99 ** 298


def test_binomial_cdf_matches_scipy():
    for n, k, p in [(10, 3, 0.2), (299, 0, 0.01), (3000, 7, 0.001), (1000, 20, 0.013), (5, 5, 0.5),
                    (100_000, 950, 0.01)]:
        assert binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-15)


def test_rank_is_the_largest_k_allowed():
    rng = np.random.default_rng(1)
    for n in (299, 500, 1000, 5000):
        level = good_part_threshold(rng.normal(size=n), 0.01, 0.95)
        assert stats.binom.cdf(level.k - 1, n, 0.01) <= 0.05 < stats.binom.cdf(level.k, n, 0.01)
        assert level.achieved <= 0.01 and level.images_needed == 299
        # the achieved rate is the bound where the rank's binomial tail reaches 1 - c
        assert stats.binom.cdf(level.k - 1, n, level.achieved) == pytest.approx(0.05, abs=1e-9)


def test_too_few_images_give_the_best_rate_they_can():
    level = good_part_threshold(np.arange(100.0), 0.01, 0.95)
    assert level.k == 1 and level.threshold == 99.0
    assert level.achieved == pytest.approx(1 - 0.05 ** (1 / 100))    # 0.0295
    assert not level.reached and level.images_needed == 299
    assert rate_bound(100, 1, 0.95) == pytest.approx(level.achieved)


def test_ties_never_flag_each_other():
    # 400 identical good parts: the threshold is their score, and "> threshold" flags none
    level = good_part_threshold(np.full(400, 0.25), 0.01, 0.95)
    assert level.threshold == 0.25 and level.empirical == 0.0
    t = calibrate_good({"a": np.full(400, 0.25)})
    choice = select_thresholds(t, "a")
    assert choice.rule == ">" and verdict_of(0.25, choice) == "OK"
    assert verdict_of(0.2500001, choice) == "REVIEW"


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_rates_outside_the_open_interval_are_refused(bad):
    with pytest.raises(CalibrationError, match="outside"):
        good_part_threshold(np.arange(10.0), bad, 0.95)
    with pytest.raises(CalibrationError, match="confidence"):
        calibrate_good({"a": np.arange(10.0)}, 0.01, bad)


def _true_false_reject(dist, threshold):
    return float(dist.sf(threshold))    # P(score > threshold) under the known distribution


@pytest.mark.parametrize("name, dist, n", [
    ("normal", stats.norm(), 300),
    ("heavy-tailed (Student t, 2 dof)", stats.t(2), 1000),
    ("discrete with ties (Poisson 4)", stats.poisson(4), 500),
    ("normal, too few images (n=120)", stats.norm(), 120),
])
def test_false_reject_guarantee_holds_at_the_stated_confidence(name, dist, n):
    """Over many calibrations on fresh samples, the share whose true false-reject rate
    is within the guaranteed rate is at least the confidence, less three standard
    errors of that share (an exact comparison would be flaky). For continuous
    scores the rule is exact: the share sits at 1 - P(Bin(n, a) <= k - 1). With ties
    (Poisson) the share holds only because a part is flagged when strictly above the
    threshold: counting scores equal to it as flagged breaks it."""
    alpha, conf, reps = 0.01, 0.95, 2000
    rng = np.random.default_rng(20261202)
    within, bounds, ks = 0, set(), set()
    for _ in range(reps):
        sample = dist.rvs(size=n, random_state=rng)
        level = good_part_threshold(sample, alpha, conf)
        # the target when the images reach it, else the best rate they guarantee
        bound = alpha if level.reached else level.achieved
        within += _true_false_reject(dist, level.threshold) <= bound
        bounds.add(round(bound, 12)), ks.add(level.k)
    share = within / reps
    se = math.sqrt(conf * (1 - conf) / reps)
    print(f"{name}: n={n}, k={sorted(ks)}, rate {sorted(bounds)}, share within it {share:.4f} "
          f"(confidence {conf}, 3 SE {3 * se:.4f})")
    assert share >= conf - 3 * se
    if dist.dist.name in ("norm", "t"):    # continuous: exact, not merely conservative
        (k,) = ks
        (bound,) = bounds
        expected = 1 - stats.binom.cdf(k - 1, n, bound)
        assert abs(share - expected) <= 3 * math.sqrt(expected * (1 - expected) / reps) + 1e-9


def test_two_levels_split_the_confidence():
    rng = np.random.default_rng(3)
    good = rng.normal(size=4000)
    t = calibrate_good({"a": good}, 0.01, 0.95, ng_alpha=0.001)
    lv = t.classes["a"]
    assert lv.ng > lv.image and lv.rule == ">" and lv.pixel == lv.image
    assert lv.provenance["confidence"] == pytest.approx(0.975)
    assert lv.provenance["joint_confidence"] == 0.95
    assert lv.provenance["ng_achieved_false_reject"] <= 0.001
    choice = select_thresholds(t, "a")
    assert [verdict_of(s, choice) for s in (lv.image, (lv.image + lv.ng) / 2, lv.ng + 1)] == \
        ["OK", "REVIEW", "NG"]
    # without an NG target nothing is NG from good parts alone
    assert verdict_of(1e9, select_thresholds(calibrate_good({"a": good}), "a")) == "REVIEW"
    with pytest.raises(CalibrationError, match="below"):
        calibrate_good({"a": good}, 0.01, 0.95, ng_alpha=0.02)


def test_f1_threshold_matches_the_metrics_rule():
    rng = np.random.default_rng(5)
    for _ in range(20):
        s = rng.integers(0, 12, size=60).astype(float)      # many ties
        y = rng.random(60) < 0.4
        assert f1_threshold(s, y) == f1_max_threshold(y, s)[1]
    assert f1_threshold([1.0, 2.0], [0, 0]) is None


def test_legacy_thresholds_keep_their_meaning():
    legacy = {"image": 0.5, "pixel": 0.4, "source": "test split", "epoch": 3,
              "classes": {"a": {"image": 0.6, "pixel": None}}, "missing": {}}
    choice = select_thresholds(legacy, "a")
    assert (choice.image, choice.ng, choice.rule) == (0.6, 0.6, ">=")
    assert verdict_of(0.6, choice) == "NG" and verdict_of(0.59, choice) == "OK"
    assert select_thresholds(legacy).pixel == 0.4
    assert Thresholds.from_legacy(legacy).to_legacy()["classes"]["a"]["image"] == 0.6
    with pytest.raises(ThresholdError, match="mtad calibrate"):
        select_thresholds({"image": None, "missing": {"image": "no anomalous image"}})


def test_classes_not_calibrated_keep_previous_levels():
    legacy = Thresholds.from_legacy({"image": 0.5, "pixel": 0.4,
                                     "classes": {"a": {"image": 0.6}, "b": {"image": 0.7}}})
    t = calibrate_good({"a": np.linspace(0, 1, 400)}, previous=legacy)
    assert t.classes["b"] == legacy.classes["b"] and t.classes["a"].rule == ">"
    assert t.classes["a"].provenance.get("f1_pixel_threshold") is None   # "a" had no pixel level
    t2 = calibrate_good({"b": np.linspace(0, 1, 10)},
                        previous=Thresholds.from_legacy({"classes": {"b": {"image": 0.7, "pixel": 0.3}}}))
    assert t2.classes["b"].pixel == t2.classes["b"].image and \
        t2.classes["b"].provenance["f1_pixel_threshold"] == 0.3
    assert t.pooled.provenance["n_images"] == 400
    with pytest.raises(CalibrationError, match="'c' is not a class"):
        calibrate_good({"c": [1.0]}, known_classes=["a", "b"])
    with pytest.raises(CalibrationError, match="no good images for class 'a'"):
        calibrate_good({"a": []})


def test_store_versions_activate_and_checkpoint_guard(tmp_path):
    store = CalibrationStore(tmp_path, "aa" * 32)
    t1 = store.add(calibrate_good({"a": np.arange(300.0)}, checkpoint_sha256="aa" * 32))
    first = (tmp_path / CALIBRATION_FILE).read_text()
    t2 = store.add(calibrate_good({"a": np.arange(400.0)}, checkpoint_sha256="aa" * 32))
    assert (t1.version, t2.version) == (1, 2) and store.active().version == 2
    data = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert data["versions"][0] == json.loads(first)["versions"][0]     # never rewritten
    assert data["versions"][1]["classes"]["a"]["scores"][:2] == [0.0, 1.0]
    assert store.activate(1).version == 1 and store.active().version == 1
    with pytest.raises(CalibrationError, match="no calibration version 9"):
        store.activate(9)
    # a calibration for another checkpoint is listed but never applied
    other = CalibrationStore(tmp_path, "bb" * 32)
    assert other.active() is None
    with pytest.raises(CalibrationError, match="another checkpoint"):
        other.activate(2)
    assert "another checkpoint" in other.describe()[0]
    legacy = {"image": 0.5, "pixel": 0.4}
    warned = []
    assert model_thresholds(tmp_path, legacy, "bb" * 32, warned.append).pooled.image == 0.5
    assert warned and "another checkpoint" in warned[0]
    assert model_thresholds(tmp_path, legacy, lambda: "aa" * 32).version == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CALIBRATION_FILE]   # no temp files


def test_a_damaged_file_is_an_error_not_a_reset(tmp_path):
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(CalibrationError, match="not a valid calibration file"):
        CalibrationStore(tmp_path, None).add(calibrate_good({"a": [1.0]}))
    assert (tmp_path / CALIBRATION_FILE).read_text() == "{not json"


def test_decision_outline_agrees_with_the_verdict():
    # a sharp one-pixel peak on an 8 x 8 map: resizing to 20 x 20 lowers the maximum
    amap = np.zeros((8, 8), np.float32)
    amap[3, 4] = 1.0
    score = float(amap.max())
    t = calibrate_good({"a": np.linspace(0.0, 0.9, 400)})
    choice = select_thresholds(t, "a")
    d = decide(amap, score, choice, size=(20, 21))
    assert d.verdict == "REVIEW" and d.pred_label
    assert d.anomaly_map.shape == (20, 21) and d.pred_mask.shape == (20, 21)
    assert d.pred_mask.any() and d.outline.any() and not (d.outline & ~d.pred_mask).any()
    low = decide(amap * 0.5, 0.5, choice, size=(20, 21))
    assert low.verdict == "OK" and not low.pred_mask.any() and not low.outline.any()
    # an F1 calibration whose pixel level lies above the whole map still outlines an NG part
    f1 = select_thresholds({"image": 0.3, "pixel": 5.0})
    d = decide(amap, score, f1, size=(16, 16))
    assert d.verdict == "NG" and d.pred_mask.any()
    # and an OK part with map pixels above the pixel level shows none
    d = decide(amap, score, select_thresholds({"image": 2.0, "pixel": 0.1}), size=(16, 16))
    assert d.verdict == "OK" and not d.pred_mask.any()
