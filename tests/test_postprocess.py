"""One map-at-the-photo's-size function for every path, and threshold selection."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtad.postprocess import ThresholdError, resize_map, select_thresholds


@pytest.mark.parametrize("src, dst", [((8, 8), (37, 53)), ((64, 64), (20, 31)), ((16, 16), (256, 256)),
                                      ((128, 128), (700, 1024)), ((5, 7), (5, 7)), ((1, 1), (3, 4))])
def test_resize_map_equals_torch_bilinear_without_corner_alignment(src, dst):
    rng = np.random.default_rng(0)
    maps = rng.random((2, 1, *src)).astype(np.float32) * 3
    expected = F.interpolate(torch.from_numpy(maps), size=dst, mode="bilinear",
                             align_corners=False).numpy()
    got = resize_map(maps, dst)
    assert got.shape == (2, 1, *dst) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5 * np.ptp(maps)  # float32 rounding of the coordinates
    assert np.array_equal(resize_map(maps[0, 0], dst), got[0, 0])  # any leading dimensions


def test_resize_map_keeps_the_range_and_a_constant_map():
    flat = np.full((16, 16), 0.7, np.float32)
    assert np.allclose(resize_map(flat, (33, 9)), 0.7)   # weights summing to 1: a few roundings
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = resize_map(ramp, (100, 100))
    assert out.min() >= ramp.min() and out.max() <= ramp.max()


SAVED = {"image": 0.5, "pixel": 0.4, "source": "test split", "epoch": 7,
         "classes": {"a": {"image": 0.3, "pixel": 0.2}, "b": {"image": 0.9, "pixel": None}}}


def test_thresholds_per_class_pooled_and_given_each_with_its_source():
    pooled = select_thresholds(SAVED)
    assert (pooled.image, pooled.pixel) == (0.5, 0.4)
    assert pooled.image_source == pooled.pixel_source == "pooled (test split, epoch 7)"
    a = select_thresholds(SAVED, "a")
    assert (a.image, a.pixel, a.image_source) == (0.3, 0.2, "class a (test split, epoch 7)")
    b = select_thresholds(SAVED, "b")  # no class pixel threshold: the pooled one, said so
    assert (b.image, b.pixel) == (0.9, 0.4) and "class b has none" in b.pixel_source
    given = select_thresholds(SAVED, "a", image=1.5)
    assert (given.image, given.image_source, given.pixel) == (1.5, "command line", 0.2)
    assert given.as_dict()["pixel_threshold_source"] == "class a (test split, epoch 7)"


@pytest.mark.parametrize("given", [{"image": float("nan")}, {"pixel": float("inf")}])
def test_given_thresholds_must_be_finite(given):
    with pytest.raises(ThresholdError, match="threshold (nan|inf) is not a finite number"):
        select_thresholds(SAVED, **given)


def test_unknown_class_lists_the_known_ones():
    with pytest.raises(ThresholdError, match="unknown class 'c'; known classes: a, b$"):
        select_thresholds(SAVED, "c")
    # a different case is not guessed at, but named
    with pytest.raises(ThresholdError, match=r"known classes: a, b \(did you mean 'a'\?\)$"):
        select_thresholds(SAVED, "A")
