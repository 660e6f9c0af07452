"""Demo data from real photographs: reproducible, disjoint, with exact visible defects."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from mtad.data import open_dataset
from mtad.data.defects import AREA_RANGE, DEFECT_KINDS, MIN_CONTRAST, add_defect
from mtad.data.perlin import perlin_noise
from mtad.data.synth import (
    CLASS_PHOTOS,
    MANIFEST_FILE,
    _as_channels,
    load_photo,
    make_demo_dataset,
    regions,
    render_crop,
)

TINY = dict(image_size=32, n_train=3, n_test_good=2, n_test_defect=4, classes=["brick", "tissue"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    summary = make_demo_dataset(root, seed=5, **TINY)
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    return root, summary, manifest


def files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def original_crop(entry, manifest, size):
    """Re-render the normal crop an image was made from, using only the manifest."""
    photo = load_photo(manifest["regions"][entry["class"]]["photo"])
    crop = render_crop(photo, entry["box"], entry["hflip"], entry["vflip"], size)
    return _as_channels(crop, 3 if photo.ndim == 3 else 1)


def saved(root, rel):
    a = np.asarray(Image.open(root / rel))
    return a[:, :, None] if a.ndim == 2 else a


def test_same_seed_gives_same_bytes(demo, tmp_path):
    root, _, _ = demo
    again = make_demo_dataset(tmp_path / "again", seed=5, **TINY)
    first, second = files(root), files(tmp_path / "again")
    assert sorted(first) == sorted(second) and len(first) > 20
    assert all(first[k] == second[k] for k in first)
    assert again["classes"]["brick"]["train"] == 3
    make_demo_dataset(tmp_path / "other", seed=6, **TINY)
    other = files(tmp_path / "other")
    pngs = [k for k in first if k.endswith(".png")]
    assert sum(first[k] != other[k] for k in pngs) > len(pngs) // 2


def test_opens_as_mvtec_with_expected_counts(demo):
    root, summary, _ = demo
    train = open_dataset(root, split="train", image_size=32)
    test = open_dataset(root, split="test", image_size=32)
    assert train.layout == "mvtec" and test.layout == "mvtec"
    assert train.classes == ["brick", "tissue"] == sorted(summary["classes"])
    assert len(train) == 2 * 3 and sum(train.labels) == 0
    assert len(test) == 2 * (2 + 4) and sum(test.labels) == 2 * 4
    for item in test:
        assert (item["gt_mask"].sum() > 0) == bool(item["gt_label"])
    assert summary["classes"]["tissue"]["colour"] and not summary["classes"]["brick"]["colour"]
    assert Image.open(root / "tissue/train/good/000.png").mode == "RGB"
    assert Image.open(root / "brick/train/good/000.png").mode == "L"
    for name in ("README.txt", "demo_summary.json"):
        assert (root / name).is_file()
    assert "CC0" in (root / "README.txt").read_text()


def test_every_defect_kind_is_present(demo):
    root, summary, manifest = demo
    for cls in TINY["classes"]:
        kinds = {e["defect"] for e in manifest["images"] if e["class"] == cls and e["split"] == "test"}
        assert kinds == {"good", *DEFECT_KINDS}
        assert sorted(os.listdir(root / cls / "ground_truth")) == sorted(DEFECT_KINDS)
        assert summary["classes"][cls]["test_defect"] == {k: 1 for k in DEFECT_KINDS}


def test_masks_are_exactly_the_changed_pixels(demo):
    root, _, manifest = demo
    defects = [e for e in manifest["images"] if e["defect"] != "good"]
    assert len(defects) == 8
    for e in defects:
        img = saved(root, e["path"]).astype(int)
        before = original_crop(e, manifest, 32).astype(int)
        mask_img = np.asarray(Image.open(root / e["mask"]))
        assert set(np.unique(mask_img)) <= {0, 255}
        mask = mask_img > 0
        changed = (img != before).any(axis=2)
        assert (changed == mask).all(), e["path"]
        assert AREA_RANGE[0] <= mask.mean() <= AREA_RANGE[1]
        assert mask.mean() == pytest.approx(e["defect_area"], abs=1e-6)  # the manifest's digits
        contrast = np.abs(img - before).max(axis=2)[mask].mean()
        assert contrast >= MIN_CONTRAST * 255, e["path"]


def test_train_and_test_regions_are_disjoint(demo):
    root, _, manifest = demo
    for cls, reg in manifest["regions"].items():
        tr, te = reg["train"], reg["test"]
        assert tr[2] <= te[0], "train region must end left of the test region"
        assert (tr[0], tr[1], te[2], te[3]) == (0, 0, reg["width"], reg["height"])
    for e in manifest["images"]:
        x0, y0, x1, y1 = manifest["regions"][e["class"]][e["split"]]
        bx0, by0, bx1, by1 = e["box"]
        assert x0 <= bx0 < bx1 <= x1 and y0 <= by0 < by1 <= y1, e["path"]
        if e["defect"] == "good":
            # The bookkeeping is true to the pixels: the crop re-renders exactly.
            assert (saved(root, e["path"]) == original_crop(e, manifest, 32)).all(), e["path"]
    boxes = [tuple(e["box"]) for e in manifest["images"] if e["class"] == "brick"]
    assert len(set(boxes)) > len(boxes) // 2, "crops should vary"


def test_regions_helper_leaves_a_gap():
    r = regions(512, 512)
    assert r["train"][2] < r["test"][0] and r["train"][0] == 0 and r["test"][2] == 512
    r = regions(1000, 872)
    assert r["train"][2] < r["test"][0]


def test_out_dir_rules(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_demo_dataset(tmp_path / "busy", **TINY)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    out = tmp_path / "demo"
    make_demo_dataset(out, seed=1, image_size=32, n_train=1, n_test_good=1, n_test_defect=1, classes=["brick", "stars"])
    make_demo_dataset(out, seed=1, image_size=32, n_train=1, n_test_good=1, n_test_defect=1, classes=["grass"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["grass"]
    with pytest.raises(ValueError, match="available"):
        make_demo_dataset(tmp_path / "x", classes=["nope"])


def test_catalogue_has_colour_and_four_default_classes():
    from mtad.data.synth import DEFAULT_CLASSES

    assert len(DEFAULT_CLASSES) >= 4
    colour = [c for c in DEFAULT_CLASSES if load_photo(CLASS_PHOTOS[c].loader).ndim == 3]
    assert colour


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_add_defect_on_plain_images(kind):
    rng = np.random.default_rng(0)
    tex = lambda r: r.random((64, 64, 1))  # noqa: E731
    for value in (30, 128, 230):
        img = np.full((64, 64, 1), value, np.uint8)
        img[::7] = 255 - value  # some structure for cut-paste to move
        out, mask = add_defect(img, kind, rng, tex)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert ((out != img).any(axis=2) == mask).all()
        assert AREA_RANGE[0] <= mask.mean() <= AREA_RANGE[1]


def test_perlin_noise_is_seeded_and_smooth():
    a = perlin_noise((64, 64), (4, 4), np.random.default_rng(3))
    b = perlin_noise((64, 64), (4, 4), np.random.default_rng(3))
    c = perlin_noise((64, 64), (4, 4), np.random.default_rng(4))
    assert (a == b).all() and not (a == c).all()
    assert np.abs(a).max() <= 1.0 and a.std() > 0.05
    # Gradient noise is zero on the lattice and varies slowly between neighbours.
    assert np.abs(a[::16, ::16]).max() < 1e-9   # exactly 0 in float64 (gradient . 0)
    assert np.abs(np.diff(a, axis=1)).max() < 0.2


def test_calibration_split_is_extra_and_from_the_test_region(demo, tmp_path):
    root, _, _ = demo
    out = tmp_path / "cal"
    summary = make_demo_dataset(out, seed=5, **TINY, n_calibration=4)
    before, after = files(root), files(out)
    # the other images are byte for byte those made without a calibration split
    assert all(after[k] == before[k] for k in before if k.endswith(".png"))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    cal = [e for e in manifest["images"] if e["split"] == "calibration"]
    assert len(cal) == 4 * len(summary["classes"]) and summary["classes"]["brick"]["calibration"] == 4
    for e in cal:
        x0, y0, x1, y1 = e["box"]
        tx0, ty0, tx1, ty1 = manifest["regions"][e["class"]]["test"]
        assert tx0 <= x0 and x1 <= tx1 and ty0 <= y0 and y1 <= ty1     # never the training part
        assert np.array_equal(saved(out, e["path"]), original_crop(e, manifest, TINY["image_size"]))
    assert sorted(p.name for p in (out / "calibration").iterdir()) == sorted(summary["classes"])
    make_demo_dataset(out, seed=5, **TINY)          # replacing the demo removes the split too
    assert not (out / "calibration").exists()
