"""Report pieces: colours mean the same on every image of a run."""
import numpy as np
import pytest

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


def test_defect_outline_is_the_masks_inner_boundary():
    from mtad.report.drawing import defect_outline

    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    ring = defect_outline(mask, 1)
    assert ring.sum() == 16 and not ring[3:6, 3:6].any() and ring[2, 2:7].all()
    assert defect_outline(mask, 2).sum() == 24
    edge = np.zeros((4, 4), bool)
    edge[:, :2] = True                       # touching the border: the border closes it
    assert defect_outline(edge, 1).sum() == 8
    assert not defect_outline(np.zeros((3, 3), bool)).any()


def test_draw_overlay_outlines_the_defect_and_writes_score_and_verdict():
    from mtad.report.drawing import DEFECTIVE_RGB, OK_RGB, OUTLINE_RGB, draw_overlay

    rgb = np.full((120, 160, 3), 90, np.uint8)
    amap = np.full((120, 160), 0.2, np.float32)
    amap[60:100, 40:100] = 1.0                                   # the defect
    plain = draw_overlay(rgb, amap, pixel_threshold=0.6)
    assert plain.shape == (120, 160, 3) and plain.dtype == np.uint8
    white = np.all(plain == OUTLINE_RGB, axis=2)
    assert white[60, 40:100].all() and white[60:100, 40].all()   # the square's border
    assert not white[61:99, 41:99].any() and not white[:59].any()
    assert np.array_equal(plain[:40], overlay(rgb, amap, 0.6)[:40])  # no banner without scores

    def near(picture, colour):
        band = picture[:24].astype(int)
        # pixels near a colour (sum of |difference| over RGB under 60 of 765): antialiased text
        return (np.abs(band - np.array(colour)).sum(axis=2) < 60).sum()

    bad = draw_overlay(rgb, amap, 0.6, pred_score=1.0, image_threshold=0.5)
    good = draw_overlay(rgb, amap, 0.6, pred_score=0.4, image_threshold=0.5)
    assert near(bad, DEFECTIVE_RGB) > 20 and near(bad, OK_RGB) == 0
    assert near(good, OK_RGB) > 20 and near(good, DEFECTIVE_RGB) == 0
    assert bad[:12].mean() < plain[:12].mean()                   # the banner is darkened
    assert np.array_equal(bad[40:], plain[40:])                  # and only the banner changes
    with pytest.raises(ValueError, match="resize_map"):
        draw_overlay(rgb, amap[:60], 0.6)


def test_verdict_text_and_ramp_lut_match_colorize():
    from mtad.report.drawing import ramp_lut, verdict_text

    assert verdict_text(3.01447, 2.9428) == ("NG  score 3.014 >= 2.943", True)
    assert verdict_text(2.5, 2.9428) == ("OK  score 2.5 < 2.943", False)
    # good-part levels: strictly above the first is REVIEW, above the NG level NG
    assert verdict_text(0.5, 0.5, "OK", ">", 0.7) == ("OK  score 0.5 <= 0.5", False)
    assert verdict_text(0.6, 0.5, "REVIEW", ">", 0.7) == ("REVIEW  score 0.6 > 0.5 (NG > 0.7)", True)
    assert verdict_text(0.8, 0.5, "NG", ">", 0.7) == ("NG  score 0.8 > 0.7", True)
    lut = np.array(ramp_lut())
    assert lut.shape == (256, 3)
    assert np.array_equal(lut[[0, 255]], colorize(np.array([0.0, 1.0])))


@pytest.mark.parametrize("threshold", [0.7, None])
def test_a_large_photos_overlay_costs_a_few_bytes_a_pixel_and_is_unchanged(threshold):
    """draw_overlay on a 3 MP photo: the same picture as blending the whole map at once
    (it works in blocks of rows), with numpy's memory beyond the photo and its map under
    8 bytes a pixel (it was ~77: float64 H x W x 3 temporaries; anomalib #2266)."""
    import tracemalloc

    from mtad.postprocess import resize_map
    from mtad.report.drawing import draw_overlay

    h, w = 1500, 2000
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    full = resize_map(rng.random((64, 64)).astype(np.float32), (h, w))
    tracemalloc.start()
    try:
        picture = draw_overlay(rgb, full, threshold, 0.9, 0.8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 8 * h * w, f"{peak / (h * w):.1f} bytes a pixel"
    # whole-map reference: the blend of colorize(heatmap_scale(map)) at once
    heat = colorize(heatmap_scale(full, threshold)).astype(np.float32)
    whole = (0.5 * rgb.astype(np.float32) + 0.5 * heat).round().astype(np.uint8)
    band = 128                      # the banner rows (96 here) differ by design: darkened, text
    if threshold is not None:
        from mtad.report.drawing import OUTLINE_RGB, defect_outline, outline_width

        whole[defect_outline(full >= threshold, outline_width(h, w))] = OUTLINE_RGB
    np.testing.assert_array_equal(picture[band:], whole[band:])
