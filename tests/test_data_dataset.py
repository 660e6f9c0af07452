"""The dataset: item format, preprocessing, and the header check before training."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import mtad.data as data
from layout_builders import S, build_mvtec, write_img, write_mask
from mtad.data import IMAGENET_MEAN, IMAGENET_STD, DataError, DataWarning, open_dataset, prepare_image, read_rgb


def test_item_format_and_normalisation(tmp_path):
    root = tmp_path / "d"
    for i in range(2):
        write_img(root / "c" / "train" / "good" / f"{i}.png", value=200, size=(40, 30))
    ds = open_dataset(root, image_size=24)
    item = ds[0]
    assert set(item) == {"image", "gt_mask", "gt_label", "class_name", "defect", "image_path"}
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
    assert item["gt_mask"].shape == (1, 24, 24) and item["gt_mask"].sum() == 0
    assert (item["gt_label"], item["class_name"], item["defect"]) == (0, "c", "good")
    assert item["image_path"] == ds.records[0].image_path
    expected = (200 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    # a constant image: float32 normalisation (~3 roundings of values ~2) and a mean of 576
    # equal values (~10 roundings): ~2e-6 at most on any CPU
    np.testing.assert_allclose(item["image"].mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["class_name"] == ["c", "c"]


def test_mask_resize_is_binarised_at_threshold(tmp_path):
    root = tmp_path / "d"
    write_img(root / "c" / "train" / "good" / "0.png")
    write_img(root / "c" / "test" / "bad" / "0.png")
    write_mask(root / "c" / "ground_truth" / "bad" / "0_mask.png", 3)  # 3 of 16 rows
    low = open_dataset(root, split="test", image_size=8, mask_threshold=0.1)[0]["gt_mask"]
    high = open_dataset(root, split="test", image_size=8, mask_threshold=0.9)[0]["gt_mask"]
    assert set(low.unique().tolist()) <= {0.0, 1.0} and set(high.unique().tolist()) <= {0.0, 1.0}
    assert low.sum() > high.sum() > 0
    with pytest.raises(ValueError, match="mask_threshold"):
        open_dataset(root, split="test", mask_threshold=1.5)


def test_crop_size_centre_crops_after_resize(tmp_path):
    build_mvtec(tmp_path, classes=("bottle",))
    ds = open_dataset(tmp_path, split="test", image_size=S, crop_size=8)
    item = next(r for r in ds if r["image_path"].endswith("10.png"))
    # Rows 0..10 of 16 are set; the centre crop keeps rows 4..11, so rows 4..10.
    assert item["image"].shape == (3, 8, 8) and int(item["gt_mask"].sum()) == 7 * 8


def test_dataset_reads_mixed_formats(tmp_path):
    root = tmp_path / "d"
    good = root / "c" / "train" / "good"
    os.makedirs(good)
    Image.fromarray(np.full((S, S), 40000, np.uint16)).save(good / "a.png")
    Image.fromarray(np.full((S, S, 4), 90, np.uint8), "RGBA").save(good / "b.png")
    Image.fromarray(np.full((S, S, 3), 90, np.uint8)).convert("P", palette=Image.ADAPTIVE).save(good / "c.png")
    Image.fromarray(np.full((S, S), 90, np.uint8)).save(good / "d.bmp")
    ds = open_dataset(root, image_size=S)
    assert len(ds) == 4
    for item in ds:
        assert item["image"].shape == (3, S, S) and torch.isfinite(item["image"]).all()


def test_prepare_image_matches_dataset(tmp_path):
    rgb = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    tensor, display = prepare_image(read_rgb(tmp_path / "x.png"), 20)
    assert tensor.shape == (3, 20, 20) and display.shape == (20, 20, 3) and display.dtype == np.uint8
    back = data.denormalise(tensor)
    assert np.abs(back.astype(int) - display).max() <= 1   # the uint8 round trip's rounding


def test_corrupt_image_raises_naming_file_and_validate_skips(tmp_path):
    build_mvtec(tmp_path, classes=("bottle",))
    bad = tmp_path / "bottle" / "train" / "good" / "001.png"
    bad.write_bytes(b"this is not a png")
    ds = open_dataset(tmp_path)
    with pytest.raises(DataError, match="001.png") as err:
        ds[1]
    assert isinstance(err.value, ValueError) and err.value.path == str(bad)
    with pytest.raises(DataError, match="001.png"):
        open_dataset(tmp_path).validate()
    skip = open_dataset(tmp_path, on_error="skip")
    with pytest.warns(DataWarning) as caught:
        skip.validate()
    assert len(skip) == 2 and [p.path for p in skip.skipped] == [str(bad)]
    assert any("001.png" in str(w.message) for w in caught)
    assert any("skipped 1" in str(w.message) for w in caught)


def test_truncated_image_found_when_decoding(tmp_path):
    build_mvtec(tmp_path, classes=("bottle",))
    path = tmp_path / "bottle" / "train" / "good" / "002.png"
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    path.write_bytes(path.read_bytes()[:300])
    ds = open_dataset(tmp_path)
    ds.validate()  # headers alone look fine
    with pytest.raises(DataError, match="002.png"):
        ds[2]
    with pytest.raises(DataError, match="002.png"):
        ds.validate(decode=True)


def test_mask_size_mismatch(tmp_path):
    build_mvtec(tmp_path, classes=("bottle",))
    write_mask(tmp_path / "bottle" / "ground_truth" / "crack" / "10_mask.png", 2, size=(S + 1, S))
    ds = open_dataset(tmp_path, split="test")
    idx = next(i for i, r in enumerate(ds.records) if r.image_path.endswith("10.png"))
    with pytest.raises(DataError, match="10_mask.png.*17x16.*16x16"):
        ds[idx]
    with pytest.raises(DataError, match="10_mask.png"):
        ds.validate()
    skip = open_dataset(tmp_path, split="test", on_error="skip")
    with pytest.warns(DataWarning):
        skip.validate()
    assert len(skip) == 5 and not any(r.image_path.endswith("10.png") for r in skip.records)


# ----------------------------------------------------------------------------- the header check


def tex(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 60 + 100).astype(np.uint8)


def build_wrong_size_mask(root):
    """A class whose second test mask is 40x40 for a 48x48 image."""
    for i in range(2):
        write_img(root / "alpha" / "train" / "good" / f"{i}.png", size=(48, 48))
    write_img(root / "alpha" / "test" / "good" / "0.png", size=(48, 48))
    for i, side in ((0, 48), (1, 40)):
        write_img(root / "alpha" / "test" / "crack" / f"{i:03d}.png", size=(48, 48))
        write_mask(root / "alpha" / "ground_truth" / "crack" / f"{i:03d}_mask.png", 10, size=(side, side))
    return root


def test_validate_finds_a_wrong_size_mask_from_headers_only(tmp_path, monkeypatch):
    build_wrong_size_mask(tmp_path)
    bad = tmp_path / "alpha" / "ground_truth" / "crack" / "001_mask.png"
    image = tmp_path / "alpha" / "test" / "crack" / "001.png"
    ds = open_dataset(tmp_path, split="test")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded pixels"))
    with pytest.raises(DataError) as err:
        ds.validate()
    assert str(err.value) == f"{bad}: mask is 40x40 but its image {image} is 48x48"
    assert err.value.path == str(bad)
    skip = open_dataset(tmp_path, split="test", on_error="skip")
    with pytest.warns(DataWarning) as caught:
        skip.validate()
    assert any("skipping " + str(bad) in str(w.message) for w in caught)
    assert len(skip) == 2 and [p.path for p in skip.skipped] == [str(bad)]


class Decoded(AssertionError):
    """Raised by a patched Pillow when an image's pixels are decoded."""


def test_validate_reads_headers_only(tmp_path, monkeypatch):
    """MVTec-sized sets: 1,000 image + mask pairs checked without decoding a pixel
    (how fast that is: benchmarks/data.py); decode=True does decode them."""
    png = (tmp_path / "i.png")
    Image.fromarray(tex(64, 64)).save(png)
    mask = (tmp_path / "m.png")
    write_mask(mask, 5, size=(64, 64))
    for folder, src, suffix in (("test/crack", png, ""), ("ground_truth/crack", mask, "_mask")):
        os.makedirs(tmp_path / "c" / folder)
        for i in range(1000):
            os.link(src, tmp_path / "c" / folder / f"{i:04d}{suffix}.png")
    ds = open_dataset(tmp_path, split="test")

    def decode(img):
        raise Decoded(img.filename)

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    ds.validate()
    assert len(ds) == 1000 and not ds.skipped
    with pytest.raises(Decoded):
        ds.validate(decode=True)


def exif_jpeg(path, raw, orientation=6):
    exif = Image.Exif()
    exif[0x0112] = orientation
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(raw).save(path, exif=exif, quality=95)


def build_phone_photos(root, mask_on="shown"):
    """JPEGs tagged "rotate 90 clockwise" (a square and a 48x32 one), dark at the stored
    top-left, with masks drawn on the picture as shown (or on the stored pixels)."""
    base = root / "part"
    for i in range(2):
        write_img(base / "train" / "good" / f"{i}.png", value=200, size=(48, 48))
    write_img(base / "test" / "good" / "0.png", value=200, size=(48, 48))
    for stem, (h, w) in (("square", (48, 48)), ("wide", (32, 48))):
        raw = np.full((h, w, 3), 200, np.uint8)
        raw[2:12, 2:12] = 0
        exif_jpeg(base / "test" / "dent" / f"{stem}.jpg", raw)
        os.makedirs(base / "ground_truth" / "dent", exist_ok=True)
        m = (raw[:, :, 0] == 0).astype(np.uint8) * 255
        if mask_on == "shown":
            m = np.rot90(m, -1)
        Image.fromarray(np.ascontiguousarray(m)).save(base / "ground_truth" / "dent" / f"{stem}_mask.png")
    return root


def test_exif_rotated_photos_align_with_masks_drawn_on_them(tmp_path):
    build_phone_photos(tmp_path)
    ds = open_dataset(tmp_path, split="test", image_size=48).validate()
    assert sorted(os.path.basename(p) for p in ds.oriented) == ["square.jpg", "wide.jpg"]
    assert ds.orientation_note().startswith("2 file(s) carry an EXIF orientation, applied")
    for k, r in enumerate(ds.records):
        if r.label:
            item = ds[k]
            dark = data.denormalise(item["image"]).mean(axis=2) < 100
            truth = item["gt_mask"][0].numpy() > 0
            assert truth.sum() > 0 and (dark & truth).sum() / truth.sum() > 0.9, r.image_path
    raw = open_dataset(tmp_path, split="test", image_size=48, exif_orientation=False)
    with pytest.raises(DataError) as err:
        raw.validate()
    assert "wide_mask.png: mask is 32x48 but its image" in str(err.value)
    assert "is 48x32 (EXIF orientation not applied: the image has EXIF orientation 6" in str(err.value)


def test_size_error_names_the_orientation(tmp_path):
    build_phone_photos(tmp_path, mask_on="stored")  # masks drawn on the stored pixels
    ds = open_dataset(tmp_path, split="test", image_size=48)
    with pytest.raises(DataError) as err:
        ds.validate()
    msg = str(err.value)
    assert "wide_mask.png: mask is 48x32 but its image" in msg and "wide.jpg is 32x48 after EXIF orientation" in msg
    assert "rotate 90 clockwise" in msg and "exif_orientation=False" in msg and "\n" not in msg
    k = next(k for k, r in enumerate(ds.records) if r.image_path.endswith("wide.jpg"))
    with pytest.raises(DataError, match="after EXIF orientation"):
        ds[k]
    raw = open_dataset(tmp_path, split="test", image_size=48, exif_orientation=False).validate()
    assert len(raw) == 3 and len(raw.oriented) == 2
    assert "ignored (exif_orientation=False)" in raw.orientation_note()


def test_lossy_masks_warn_once_per_dataset(tmp_path):
    build_mvtec(tmp_path, classes=("bottle",))
    gt = tmp_path / "bottle" / "ground_truth"
    for p in sorted(gt.rglob("*_mask.png")):
        Image.open(p).save(p.with_suffix(".jpg"), quality=90)
        p.unlink()
    ds = open_dataset(tmp_path, split="test", image_size=S)
    with pytest.warns(DataWarning) as caught:
        ds.validate()
    lossy = [str(w.message) for w in caught if "lossy" in str(w.message)]
    assert len(lossy) == 1 and lossy[0].startswith("4 mask(s) stored in a lossy format, e.g. ")
    assert ds.lossy_masks[0] in lossy[0] and len(ds.lossy_masks) == 4
    areas = {os.path.basename(r["image_path"]): int(r["gt_mask"].sum()) for r in ds if r["gt_label"]}
    assert areas == {"0.png": 1 * S, "1.png": 2 * S, "2.png": 3 * S, "10.png": 11 * S}
