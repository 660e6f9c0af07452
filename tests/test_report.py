"""Report pieces: colours mean the same on every image of a run."""
import numpy as np

from mtad.report import colorize, heatmap_scale, overlay


def test_heatmap_scale_puts_the_threshold_mid_scale():
    amap = np.array([[0.2, 0.4], [0.6, 1.0]])
    scaled = heatmap_scale(amap, threshold=0.6)
    assert scaled[0, 0] == 0.0 and scaled[1, 0] == 0.5 and scaled[1, 1] > 0.5
    flat = heatmap_scale(np.full((2, 2), 3.0), threshold=None)
    assert np.all(flat == 0)


def test_colorize_and_overlay():
    ramp = colorize(np.array([[0.0, 0.5, 1.0, 2.0]]))
    assert ramp.dtype == np.uint8 and ramp.shape == (1, 4, 3)
    assert ramp[0, 0, 2] > ramp[0, 0, 0]          # low values are blue
    assert ramp[0, 2, 0] > ramp[0, 2, 2]          # high values are red
    assert np.array_equal(ramp[0, 2], ramp[0, 3])  # clipped above 1
    rgb = np.zeros((1, 4, 3), np.uint8)
    mixed = overlay(rgb, np.array([[0.0, 0.5, 1.0, 2.0]]), threshold=None, alpha=0.5)
    assert np.array_equal(mixed, np.round(0.5 * colorize(np.array([[0, .25, .5, 1.0]]))).astype(np.uint8))
