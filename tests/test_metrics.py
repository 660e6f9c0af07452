"""Tests for mtad.metrics: hand-worked cases, scikit-learn agreement, slow references.

Tolerances: the metrics are float64 arithmetic (unit roundoff 1.1e-16) on integer counts
(exact) over at most ~1e5 pixels, so on any CPU they are within ~1e-11 of the exact value and
usually within a few units. abs=1e-12 compares two of our own computations of values <= 1
(another order of the same sums); abs=1e-9 compares with scikit-learn or a slow loop
(their own summation and integration order); bare pytest.approx (rel 1e-6) compares with a
hand-worked fraction. A wrong tie rule or threshold step moves a metric by >= 1e-3 here.
"""
import pickle
from collections import deque

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from mtad.metrics import Evaluator, compute_metrics, f1_max_threshold, to_markdown
from mtad.metrics.exact import ALL_KEYS, MAD_OF

PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro", "pixel_iou_max")


# --------------------------------------------------------------------------- helpers
def blobs(rng, n, size=24, p_anomalous=0.6, decimals=None):
    """n images: labels, scores, blob masks, maps that are higher on the blobs."""
    yy, xx = np.mgrid[:size, :size]
    labels = (rng.random(n) < p_anomalous).astype(int)
    masks = np.zeros((n, size, size), np.uint8)
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(0.5, size / 5, 2)
            masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    labels = (masks.reshape(n, -1).max(1) > 0).astype(int)  # a tiny blob can vanish
    maps = rng.random((n, size, size)) * 0.8 + masks * rng.uniform(0, 0.8, (n, size, size))
    scores = maps.reshape(n, -1).max(1) + rng.normal(0, 0.2, n)
    if decimals is not None:
        maps, scores = maps.round(decimals), scores.round(decimals)
    return labels, scores, masks, maps.astype(np.float32)


def label_8(mask):
    """Obviously-correct 8-connected component labelling (BFS)."""
    out = np.zeros(mask.shape, int)
    n = 0
    for start in zip(*np.nonzero(mask)):
        if out[start]:
            continue
        n += 1
        out[start] = n
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not out[v, u]:
                        out[v, u] = n
                        queue.append((v, u))
    return out, n


def slow_pixel_reference(masks, maps, max_fpr=0.3):
    """Loop over every distinct map value: AUPRO, F1-max, IoU-max by definition."""
    masks = masks.astype(bool)
    regions = []  # (image index, boolean region mask)
    for i, m in enumerate(masks):
        lab, n = label_8(m)
        regions += [(i, lab == r) for r in range(1, n + 1)]
    normal = ~masks
    points, f1s, ious = [(0.0, 0.0)], [], []
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        pro = np.mean([pred[i][r].sum() / r.sum() for i, r in regions])
        fpr = (pred & normal).sum() / normal.sum()
        points.append((fpr, pro))
        tp, fp, fn = (pred & masks).sum(), (pred & normal).sum(), (~pred & masks).sum()
        f1s.append(2 * tp / (2 * tp + fp + fn))
        ious.append(tp / (tp + fp + fn))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 > max_fpr:
            y_cut = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_cut) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr, max(f1s), max(ious)


def sklearn_f1_max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    return f1.max()


def one_image(mask, values):
    """A single-image class: image label 1, score = max."""
    mask = np.asarray(mask, np.uint8)[None]
    values = np.asarray(values, np.float64)[None]
    return compute_metrics([1, 0], [1.0, 0.0], np.concatenate([mask, 0 * mask]),
                           np.concatenate([values, np.zeros_like(values)]))


# --------------------------------------------------------------------------- hand-worked
def test_perfect_map_scores_one():
    rng = np.random.default_rng(0)
    labels, _, masks, _ = blobs(rng, 12)
    maps = masks + rng.random(masks.shape) * 0.5  # every defect pixel above every normal one
    r = compute_metrics(labels, labels + 0.1 * rng.random(12), masks, maps)
    for k in ALL_KEYS:
        assert r[k] == pytest.approx(1.0, abs=1e-12), k
    assert r["note"] is None and all(type(r[k]) is float for k in ALL_KEYS)


def test_constant_map():
    rng = np.random.default_rng(1)
    labels, _, masks, _ = blobs(rng, 10)
    P = int(masks.sum())
    N = masks.size - P
    r = compute_metrics(labels, np.ones(10), masks, np.full(masks.shape, 0.25))
    assert r["image_auroc"] == pytest.approx(0.5)
    assert r["pixel_auroc"] == pytest.approx(0.5)
    assert r["pixel_ap"] == pytest.approx(P / (P + N))
    assert r["pixel_f1_max"] == pytest.approx(2 * P / (2 * P + N))
    assert r["pixel_iou_max"] == pytest.approx(P / (P + N))
    # the single threshold joins (0,0) to (1,1): area 0.3*0.3/2 over 0.3
    assert r["pixel_aupro"] == pytest.approx(0.15)


def test_one_region_found_step_by_step():
    # region of 4 pixels: two at 0.9, two at 0.5; ten normal pixels at 0.7
    mask = np.zeros((10, 10))
    mask[0, :4] = 1
    vals = np.zeros((10, 10))
    vals[0, :2], vals[0, 2:4] = 0.9, 0.5
    vals[5, :10] = 0.7
    r = one_image(mask, vals)
    fpr = 10 / (2 * 100 - 4)  # normal pixels of both images
    # PRO: 0.5 from FPR 0 to fpr, then 1
    assert r["pixel_aupro"] == pytest.approx((0.5 * fpr + (0.3 - fpr)) / 0.3)
    # F1 at 0.9: tp=2 fp=0 -> 2*2/(2+0+4); at 0.5: tp=4 fp=10 -> 8/18
    assert r["pixel_f1_max"] == pytest.approx(4 / 6)
    assert r["pixel_iou_max"] == pytest.approx(2 / 4)


def test_two_regions_of_very_different_size_weigh_equally():
    mask = np.zeros((20, 20))
    mask[0, 0] = 1  # region A, 1 pixel, found
    mask[10:20, 10:20] = 1  # region B, 100 pixels, missed
    vals = mask.copy() * 0.0
    vals[0, 0] = 1.0
    r = one_image(mask, vals)
    # threshold 1: PRO 0.5 at FPR 0; threshold 0: (1, 1) -> chord from (0, .5) to (1, 1)
    assert r["pixel_aupro"] == pytest.approx(0.3 * (0.5 + 0.65) / 2 / 0.3)
    # pixel-wise, threshold 1 finds only 1/101 of the defect (F1 2/102), so the
    # best F1 is at threshold 0: tp 101, fp all 699 normal pixels of both images
    assert r["pixel_f1_max"] == pytest.approx(202 / (101 + 699 + 101))


def test_regions_are_8_connected_and_per_image():
    # diagonal neighbours form one region (8-connectivity): 2 regions, the lone one found
    mask = np.zeros((8, 8))
    mask[0, 0] = mask[1, 1] = mask[5, 5] = 1
    vals = np.zeros((8, 8))
    vals[5, 5] = 1.0
    # 2 regions: PRO 0.5 at FPR 0, then the chord to (1, 1); with 3 regions it would be 1/3
    assert one_image(mask, vals)["pixel_aupro"] == pytest.approx((0.5 + 0.65) / 2)
    # same pixel positions in two stacked images are separate regions
    masks = np.zeros((2, 4, 4))
    masks[0, 0, 0] = 1
    masks[1, 0, 0] = masks[1, 0, 1] = masks[1, 1, 0] = 1
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 1.0
    r = compute_metrics([1, 1], [1, 1], masks, maps)
    assert r["pixel_aupro"] == pytest.approx((0.5 + 0.65) / 2)  # merged it would be (0.25 + ...)


def test_ties_between_normal_and_defect_pixels():
    mask = np.zeros((10, 10))
    mask[3, 3] = 1
    vals = np.zeros((10, 10))
    vals[3, 3] = vals[7, 7] = 0.5  # one defect pixel tied with one normal pixel
    r = one_image(mask, vals)
    N = 199
    assert r["pixel_auroc"] == pytest.approx((N - 1 + 0.5) / N)
    assert r["pixel_ap"] == pytest.approx(0.5)
    assert r["pixel_f1_max"] == pytest.approx(2 / 3)
    assert r["pixel_iou_max"] == pytest.approx(0.5)
    # tied step is a chord from (0, 0) to (1/N, 1)
    assert r["pixel_aupro"] == pytest.approx((0.5 / N + (0.3 - 1 / N)) / 0.3)
    m, v = np.stack([mask, 0 * mask]).ravel(), np.stack([vals, 0 * vals]).ravel()
    assert r["pixel_auroc"] == pytest.approx(roc_auc_score(m, v), abs=1e-12)
    assert r["pixel_ap"] == pytest.approx(average_precision_score(m, v), abs=1e-12)


# --------------------------------------------------------------------------- references
@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 1), (2, 2), (3, 0)])
def test_agrees_with_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    labels, scores, masks, maps = blobs(rng, 40, decimals=decimals)
    if decimals == 0:  # integer-valued, very heavy ties
        scores = rng.integers(0, 3, 40).astype(float)
        maps = (maps * 3).round().astype(np.float32)
    r = compute_metrics(labels, scores, masks, maps)
    m, v = masks.ravel(), maps.ravel()
    assert r["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert r["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert r["image_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-9)
    assert r["pixel_auroc"] == pytest.approx(roc_auc_score(m, v), abs=1e-9)
    assert r["pixel_ap"] == pytest.approx(average_precision_score(m, v), abs=1e-9)
    assert r["pixel_f1_max"] == pytest.approx(sklearn_f1_max(m, v), abs=1e-9)
    assert r["mad"] == pytest.approx(np.mean([r[k] for k in MAD_OF]))


@pytest.mark.parametrize("seed,decimals", [(4, 2), (5, 1), (6, 3)])
def test_agrees_with_slow_threshold_loop(seed, decimals):
    rng = np.random.default_rng(seed)
    labels, scores, masks, maps = blobs(rng, 8, size=16, decimals=decimals)
    r = compute_metrics(labels, scores, masks, maps)
    aupro, f1, iou = slow_pixel_reference(masks, maps)
    assert r["pixel_aupro"] == pytest.approx(aupro, abs=1e-9)
    assert r["pixel_f1_max"] == pytest.approx(f1, abs=1e-12)
    assert r["pixel_iou_max"] == pytest.approx(iou, abs=1e-12)


def test_f1_max_threshold_reproduces_its_f1():
    rng = np.random.default_rng(7)
    y = rng.random(500) < 0.3
    s = (rng.random(500) + y * 0.4).round(2)
    f1, t = f1_max_threshold(y, s)
    pred = s >= t
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    assert f1 == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    best = max(2 * (y & (s >= u)).sum() / (y.sum() + (s >= u).sum()) for u in np.unique(s))
    assert f1 == pytest.approx(best, abs=1e-12)
    # pixel maps of any shape are flattened together
    f1_2d, t_2d = f1_max_threshold(y.reshape(20, 25), s.reshape(20, 25))
    assert (f1_2d, t_2d) == (f1, t)
    with pytest.raises(ValueError):
        f1_max_threshold(np.zeros(5), np.arange(5))
    # F1 2/3 at both 4 and 1: the highest threshold is returned
    assert f1_max_threshold([1, 0, 0, 1], [4, 3, 2, 1]) == (pytest.approx(2 / 3), 4.0)


def test_torch_and_channel_dim_accepted():
    rng = np.random.default_rng(8)
    labels, scores, masks, maps = blobs(rng, 10)
    a = compute_metrics(labels, scores, masks, maps)
    b = compute_metrics(torch.tensor(labels), torch.tensor(scores), torch.tensor(masks)[:, None],
                        torch.tensor(maps)[:, None])
    assert a == b
    with pytest.raises(ValueError):
        compute_metrics(labels, scores, masks, np.where(masks, np.nan, maps))


# --------------------------------------------------------------------------- evaluator
def three_classes(seed=9):
    rng = np.random.default_rng(seed)
    data = {}
    for name, n in (("screw", 14), ("bottle", 10), ("carpet", 12)):
        data[name] = blobs(rng, n, decimals=3)
    return data


def feed(ev, data, batch=5, order=None):
    """Interleave classes in mixed batches, as a test loop over a shuffled loader would."""
    items = [(name, i) for name, d in data.items() for i in range(len(d[0]))]
    if order is not None:
        items = [items[k] for k in order]
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        names = [n for n, _ in chunk]
        get = lambda j: np.stack([data[n][j][i] for n, i in chunk])  # noqa: E731
        ev.update(names, get(0), get(1), torch.tensor(get(2))[:, None], torch.tensor(get(3)))
    return ev


def test_evaluator_groups_by_class_and_pools_thresholds():
    data = three_classes()
    res = feed(Evaluator(), data).compute()
    assert list(res["classes"]) == ["bottle", "carpet", "screw"]
    for name, (l, s, m, v) in data.items():
        single = compute_metrics(l, s, m, v)
        assert res["classes"][name] == {k: single[k] for k in ALL_KEYS}
    for k in ALL_KEYS[:-1]:
        assert res["mean"][k] == pytest.approx(np.mean([res["classes"][n][k] for n in data]))
    assert res["mean"]["mad"] == pytest.approx(np.mean([res["mean"][k] for k in MAD_OF]))
    assert res["approximate"] is False and res["method"] == "exact" and res["notes"] == {}
    cat = lambda j: np.concatenate([d[j].ravel() for d in data.values()])  # noqa: E731
    assert res["thresholds"]["image"] == f1_max_threshold(cat(0), cat(1))[1]
    assert res["thresholds"]["pixel"] == f1_max_threshold(cat(2), cat(3))[1]


def test_merge_of_halves_after_pickling_equals_one_evaluator():
    data = three_classes(10)
    n = sum(len(d[0]) for d in data.values())
    order = np.random.default_rng(0).permutation(n)
    for kwargs in ({}, {"streaming": True, "bins": 256}):
        whole = feed(Evaluator(**kwargs), data, order=order).compute()
        a, b = Evaluator(**kwargs), Evaluator(**kwargs)
        feed(a, data, order=order[: n // 2])
        feed(b, data, order=order[n // 2:])
        merged = pickle.loads(pickle.dumps(a)).merge(pickle.loads(pickle.dumps(b))).compute()
        for name in data:
            for k in ALL_KEYS:
                assert merged["classes"][name][k] == pytest.approx(whole["classes"][name][k], abs=1e-12)
        assert merged["thresholds"] == whole["thresholds"]


def test_streaming_merge_folds_different_adaptive_ranges():
    rng = np.random.default_rng(11)
    l, s, m, v = blobs(rng, 20)
    small, big = Evaluator(streaming=True, bins=64), Evaluator(streaming=True, bins=64)
    small.update("c", l[:10], s[:10], m[:10], v[:10] * 0.1)  # range [0, 0.125]
    big.update("c", l[10:], s[10:], m[10:], v[10:] * 3)  # range [0, 4]
    wide_first = Evaluator(streaming=True, bins=64)  # range fixed by the first batch: no folding
    wide_first.update("c", l[10:], s[10:], m[10:], v[10:] * 3)
    wide_first.update("c", l[:10], s[:10], m[:10], v[:10] * 0.1)
    expected = wide_first.compute()["classes"]
    narrow_first = Evaluator(streaming=True, bins=64)  # must fold its bins when the range grows
    narrow_first.update("c", l[:10], s[:10], m[:10], v[:10] * 0.1)
    narrow_first.update("c", l[10:], s[10:], m[10:], v[10:] * 3)
    assert narrow_first.compute()["classes"] == expected
    for merged in (pickle.loads(pickle.dumps(small)).merge(big), pickle.loads(pickle.dumps(big)).merge(small)):
        assert merged.compute()["classes"] == expected
        hi = 2.0 ** np.ceil(np.log2(v.max() * 3))
        assert f"[0, {hi:g}]" in merged.method()


def test_missing_normals_anomalies_and_defect_pixels_give_none_and_notes():
    rng = np.random.default_rng(12)
    l, s, m, v = blobs(rng, 12)
    ev = Evaluator()
    ev.update(["ok"] * 12, l, s, m, v)
    an = l == 1
    ev.update(["all_bad"] * an.sum(), l[an], s[an], m[an], v[an])
    ev.update(["all_good"] * (~an).sum(), l[~an], s[~an], m[~an], v[~an])
    ev.update(["no_maps"] * 12, l, s)
    res = ev.compute()
    c = res["classes"]
    assert c["all_bad"]["image_auroc"] is None and c["all_bad"]["pixel_auroc"] is not None
    assert all(c["all_good"][k] is None for k in ALL_KEYS)
    assert all(c["no_maps"][k] is None for k in PIXEL_KEYS) and c["no_maps"]["image_ap"] is not None
    assert "no normal test image" in res["notes"]["all_bad"]
    assert "no anomalous test image" in res["notes"]["all_good"]
    assert "no anomalous pixel" in res["notes"]["all_good"]
    assert "no anomaly maps" in res["notes"]["no_maps"]
    assert "ok" not in res["notes"]
    assert res["mean"]["image_auroc"] == pytest.approx(np.mean([c[n]["image_auroc"] for n in ("ok", "no_maps")]))
    assert res["mean"]["pixel_auroc"] == pytest.approx(np.mean([c[n]["pixel_auroc"] for n in ("ok", "all_bad")]))
    # the mean row's mAD is the mean of its seven columns (not the mean of class mADs)
    assert res["mean"]["mad"] == pytest.approx(np.mean([res["mean"][k] for k in MAD_OF]))
    assert res["mean"]["mad"] != pytest.approx(np.mean([c[n]["mad"] for n in c if c[n]["mad"] is not None]))
    assert not any(isinstance(x, float) and np.isnan(x) for row in c.values() for x in row.values())
    md = to_markdown(res)
    row = next(line for line in md.splitlines() if line.startswith("| all_good |"))
    assert row.count("n/a") == 9
    assert "- all_good: no anomalous test image" in md and "Method: exact" in md
    single = compute_metrics(l[an], s[an], m[an], v[an])
    assert single["image_auroc"] is None and "no normal test image" in single["note"]


def test_markdown_layout_and_percentages():
    data = three_classes(13)
    res = feed(Evaluator(), data).compute()
    md = to_markdown(res).splitlines()
    assert md[0] == ("| Class | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | AUPRO | IoU-max | mAD |")
    bottle = md[2].split(" | ")
    assert bottle[0] == "| bottle" and bottle[1] == f"{100 * res['classes']['bottle']['image_auroc']:.1f}"
    assert md[5].startswith("| **Mean** |")
    stream = feed(Evaluator(streaming=True, bins=512), data).compute()
    assert "streaming histogram, 512 bins (approximate)" in to_markdown(stream)


def test_streaming_within_stated_error_of_exact():
    rng = np.random.default_rng(14)
    data = {name: blobs(rng, 30, size=32) for name in ("a", "b")}
    exact = feed(Evaluator(), data, batch=7).compute()
    stream = feed(Evaluator(streaming=True, bins=4096), data, batch=7).compute()
    assert stream["approximate"] is True and "4096 bins" in stream["method"]
    for name in data:
        for k in ALL_KEYS:
            bound = stream["error_bounds"][name][k]
            err = abs(stream["classes"][name][k] - exact["classes"][name][k])
            assert err <= bound + 1e-12, (name, k, err, bound)
            assert bound < 0.01, (name, k, bound)  # and the bound is useful at 4096 bins
        for k in ("image_auroc", "image_ap", "image_f1_max"):  # image level stays exact
            assert stream["classes"][name][k] == exact["classes"][name][k]
    # coarse bins: errors grow but stay within their (larger) bounds
    coarse = feed(Evaluator(streaming=True, bins=16), data, batch=7).compute()
    worst = 0.0
    for name in data:
        for k in PIXEL_KEYS:
            err = abs(coarse["classes"][name][k] - exact["classes"][name][k])
            assert err <= coarse["error_bounds"][name][k] + 1e-12
            worst = max(worst, err)
    assert worst > 1e-4  # the 16-bin result really is approximate
    assert abs(coarse["thresholds"]["pixel"] - exact["thresholds"]["pixel"]) <= 1.0 / 16 * 2


def test_streaming_error_bounds_are_reached_in_the_worst_case():
    # every defect pixel (0.72) just above the normal pixels sharing its bin
    # (0.70): exact metrics are all 1, the quantised ones treat the bin as a tie
    masks = np.zeros((4, 10, 10), np.uint8)
    masks[:2, :3, :3] = 1
    maps = np.zeros(masks.shape)
    maps[masks == 1] = 0.72
    maps[2, :5, :6] = 0.70  # 30 of 382 normal pixels: FPR of the bin 0.079 < 0.3
    ev = Evaluator(streaming=True, bins=4, value_range=(0.0, 1.0))
    ev.update("c", [1, 1, 0, 0], [1, 1, 0, 0], masks, maps)
    res = ev.compute()
    exact = compute_metrics([1, 1, 0, 0], [1, 1, 0, 0], masks, maps)
    for k in PIXEL_KEYS:
        assert exact[k] == pytest.approx(1.0)
        err = exact[k] - res["classes"]["c"][k]
        assert err > 0.01 and err == pytest.approx(res["error_bounds"]["c"][k], rel=1e-9), k


def test_streaming_fixed_range_clamps_and_says_so():
    rng = np.random.default_rng(15)
    l, s, m, v = blobs(rng, 10)
    ev = Evaluator(streaming=True, bins=32, value_range=(0.0, 0.5))
    ev.update("c", l, s, m, v)
    assert ev._clamped == int((v > 0.5).sum()) > 0
    assert "clamped" in ev.compute()["method"]
    with pytest.raises(ValueError):
        Evaluator(streaming=True).update("c", l, s, m, v - 1)  # adaptive range needs >= 0


def test_streaming_state_does_not_grow_with_data():
    """Twenty more batches add to the pickled streaming evaluator (what merge ships) only
    their image-level records (labels and scores, kept exact: ~15 bytes an image), under
    2 % of the masks and maps fed; the exact evaluator, which keeps every pixel, grows by
    at least those bytes, so the measure would see a map kept."""
    rng = np.random.default_rng(16)
    l, s, m, v = blobs(rng, 10)
    fed = 20 * (m.nbytes + v.nbytes)
    growth = {}
    for streaming in (True, False):
        ev = Evaluator(streaming=streaming, bins=1024)
        ev.update("c", l, s, m, v)
        size1 = len(pickle.dumps(ev))
        for _ in range(20):
            ev.update("c", l, s, m, v)
        growth[streaming] = len(pickle.dumps(ev)) - size1
        assert len(ev._classes["c"].maps) == (0 if streaming else 21)
    assert growth[False] >= fed
    assert growth[True] < 0.02 * fed, growth
