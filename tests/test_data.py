"""Dataset listing and reading on miniature trees of every layout (built in tmp_path)."""
from __future__ import annotations

import csv
import json
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import mtad.data as data
from mtad.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    DataWarning,
    detect_layout,
    open_dataset,
    prepare_image,
    read_mask,
    read_rgb,
)

S = 16  # side of the tiny test images; image_size=S keeps mask areas exact


# ----------------------------------------------------------------------------- writers


def write_img(path, value=128, size=(S, S), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(a).convert(mode).save(path)
    return str(path)


def write_mask(path, rows, size=(S, S), value=255, start=0):
    """A mask whose first ``rows`` rows (from ``start``) are set: its area identifies it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.zeros((size[1], size[0]), np.uint8)
    a[start : start + rows] = value
    Image.fromarray(a).save(path)
    return str(path)


def png16_rgb(path, arr):
    """A 16-bit RGB PNG (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, payload):
        body = tag + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- layout builders

MVTEC_DEFECTS = {"crack": ["1", "2", "10"], "scratch": ["0"]}


def build_mvtec(root, classes=("bottle", "cable"), n_train=3, n_good=2, defects=MVTEC_DEFECTS):
    for cls in classes:
        for i in range(n_train):
            write_img(root / cls / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good):
            write_img(root / cls / "test" / "good" / f"{i:03d}.png")
        for defect, stems in defects.items():
            for stem in stems:
                write_img(root / cls / "test" / defect / f"{stem}.png")
                write_mask(root / cls / "ground_truth" / defect / f"{stem}_mask.png", int(stem) + 1)
    return root


def build_btad(root):
    for cls in ("01", "02"):
        for i in range(2):
            write_img(root / cls / "train" / "ok" / f"{i:04d}.bmp")
            write_img(root / cls / "test" / "ok" / f"{i:04d}.bmp")
        for stem, rows in (("0000", 3), ("0007", 5)):
            write_img(root / cls / "test" / "ko" / f"{stem}.bmp")
            write_mask(root / cls / "ground_truth" / "ko" / f"{stem}.png", rows)
    return root


def build_loco(root):
    cls = "juice_bottle"
    for i in range(2):
        write_img(root / cls / "train" / "good" / f"{i:03d}.png")
        write_img(root / cls / "validation" / "good" / f"{i:03d}.png")
        write_img(root / cls / "test" / "good" / f"{i:03d}.png")
    write_img(root / cls / "test" / "logical_anomalies" / "000.png")
    write_mask(root / cls / "ground_truth" / "logical_anomalies" / "000" / "000.png", 2, start=0)
    write_mask(root / cls / "ground_truth" / "logical_anomalies" / "000" / "001.png", 3, start=10)
    write_img(root / cls / "test" / "structural_anomalies" / "000.png")
    write_mask(root / cls / "ground_truth" / "structural_anomalies" / "000" / "000.png", 4)
    return root


def build_mvtec3d(root):
    cls = "bagel"
    for i in range(2):
        write_img(root / cls / "train" / "good" / "rgb" / f"{i:03d}.png")
        write_mask(root / cls / "train" / "good" / "gt" / f"{i:03d}.png", 0)
        write_img(root / cls / "validation" / "good" / "rgb" / f"{i:03d}.png")
        write_img(root / cls / "test" / "good" / "rgb" / f"{i:03d}.png")
        write_mask(root / cls / "test" / "good" / "gt" / f"{i:03d}.png", 0)
    write_img(root / cls / "test" / "crack" / "rgb" / "000.png")
    write_mask(root / cls / "test" / "crack" / "gt" / "000.png", 6)
    os.makedirs(root / cls / "test" / "crack" / "xyz")
    return root


def build_visa(root, mask_value=1):
    rows = []
    for cls in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            write_img(root / rel)
            rows.append([cls, "train" if i < 2 else "test", "normal", rel, ""])
        anno = [["image", "label", "mask"]]
        for i, rows_set in ((0, 2), (1, 5)):
            rel = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            write_img(root / rel)
            write_mask(root / mrel, rows_set, value=mask_value)
            rows.append([cls, "test", "anomaly", rel, mrel])
            anno.append([rel, "scratch" if i == 0 else "chunk missing", mrel])
        with open(root / cls / "image_anno.csv", "w", newline="") as f:
            csv.writer(f).writerows(anno)
    os.makedirs(root / "split_csv", exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def realiad_name(cls, sample, kind, view):
    return f"{cls}_{sample:04d}_{kind}_{view}_2023102113110{sample}"


def build_realiad(root, res="256"):
    for cls in ("audiojack", "woodstick"):
        base = root / f"realiad_{res}" / cls
        train, test = [], []
        for sample, split in ((1, train), (2, test)):
            for view in ("C1", "C2"):
                rel = f"OK/S{sample:04d}/{realiad_name(cls, sample, 'OK', view)}.jpg"
                write_img(base / rel)
                split.append({"category": cls, "anomaly_class": "OK", "image_path": rel, "mask_path": None})
        for view, rows in (("C1", 2), ("C2", 7)):
            stem = realiad_name(cls, 3, "NG", view)
            rel = f"NG/AK/S0003/{stem}.jpg"
            write_img(base / rel)
            write_mask(base / f"NG/AK/S0003/{stem}.png", rows)
            test.append({"category": cls, "anomaly_class": "AK", "image_path": rel, "mask_path": f"NG/AK/S0003/{stem}.png"})
        jdir = root / "realiad_jsons" / "realiad_jsons"
        os.makedirs(jdir, exist_ok=True)
        with open(jdir / f"{cls}.json", "w") as f:
            json.dump({"meta": {"normal_class": "OK"}, "train": train, "test": test}, f)
    return root


def build_ader(root):
    meta = {"train": {}, "test": {}}
    for cls in ("capsule", "grid"):
        meta["train"][cls] = [
            {"img_path": write_rel(root, f"imgs/{cls}/train/{i}.png"), "mask_path": "", "cls_name": cls, "specie_name": "good", "anomaly": 0}
            for i in range(2)
        ]
        test = [{"img_path": write_rel(root, f"imgs/{cls}/test/ok.png"), "mask_path": "", "cls_name": cls, "specie_name": "good", "anomaly": 0}]
        mrel = f"masks/{cls}/hole.png"
        write_mask(root / mrel, 3)
        test.append({"img_path": write_rel(root, f"imgs/{cls}/test/hole.png"), "mask_path": mrel, "cls_name": cls, "specie_name": "hole", "anomaly": 1})
        meta["test"][cls] = test
    with open(root / "meta.json", "w") as f:
        json.dump(meta, f)
    return root


def write_rel(root, rel):
    write_img(root / rel)
    return rel


BUILDERS = {
    "mvtec": build_mvtec,
    "btad": build_btad,
    "mvtec_loco": build_loco,
    "mvtec3d": build_mvtec3d,
    "visa": build_visa,
    "realiad": build_realiad,
    "ader": build_ader,
}


# ----------------------------------------------------------------------------- MVTec and item format


def test_mvtec_counts_labels_classes_and_defects(tmp_path):
    build_mvtec(tmp_path)
    train = open_dataset(tmp_path, "mvtec", "train", image_size=S)
    test = open_dataset(tmp_path, "mvtec", split="test", image_size=S)
    assert len(train) == 6 and train.labels == [0] * 6
    assert train.classes == ["bottle", "cable"]
    assert train.item_classes == ["bottle"] * 3 + ["cable"] * 3
    assert len(test) == 2 * (2 + 4)
    assert sum(test.labels) == 8
    assert {r.defect for r in test.records} == {"good", "crack", "scratch"}
    assert all((r.defect == "good") == (r.label == 0) for r in test.records)
    assert all(len(r.mask_paths) == (1 if r.label else 0) for r in test.records)
    only = open_dataset(tmp_path, "mpdd", "test", classes="cable")
    assert only.classes == ["cable"] and len(only) == 6


def test_listing_reads_no_pixels(tmp_path, monkeypatch):
    build_mvtec(tmp_path)

    def forbidden(*a, **k):
        raise AssertionError("listing opened an image")

    monkeypatch.setattr(Image, "open", forbidden)
    ds = open_dataset(tmp_path, split="test")
    assert len(ds.records) == 12 and ds.labels and ds.item_classes


def test_masks_are_paired_by_stem_not_sorted_position(tmp_path):
    build_mvtec(tmp_path, classes=("bottle",))
    ds = open_dataset(tmp_path, split="test", image_size=S)
    areas = {r["image_path"].split(os.sep)[-2] + "/" + os.path.basename(r["image_path"]): int(r["gt_mask"].sum()) for r in ds}
    # Mask of NNN.png covers int(NNN) + 1 rows; sorted orders of 1, 10, 2 differ.
    assert areas["crack/1.png"] == 2 * S
    assert areas["crack/2.png"] == 3 * S
    assert areas["crack/10.png"] == 11 * S
    assert areas["scratch/0.png"] == 1 * S
    assert areas["good/000.png"] == 0


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


# ----------------------------------------------------------------------------- image formats


def test_read_rgb_handles_every_mode(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert read_rgb(tmp_path / "grey.png").shape == (8, 8, 3)
    assert (read_rgb(tmp_path / "grey.png")[:, :, 1] == grey).all()

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent: alpha must be ignored
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert tuple(read_rgb(tmp_path / "rgba.png")[0, 0]) == (200, 0, 0)

    pal = Image.fromarray(np.full((8, 8, 3), (10, 180, 60), np.uint8)).convert("P", palette=Image.ADAPTIVE)
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    assert tuple(read_rgb(tmp_path / "pal.png")[3, 3]) == (10, 180, 60)

    wide = np.full((8, 8), 1000, np.uint16)
    wide[0, 0], wide[0, 1] = 65535, 32768
    Image.fromarray(wide).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    g16 = read_rgb(tmp_path / "g16.png")
    assert g16.dtype == np.uint8
    # Scaled (1000 / 65535 * 255 = 3.9), not clipped to 255 as PIL's convert does.
    assert tuple(g16[1, 1]) == (4, 4, 4) and g16[0, 0, 0] == 255 and g16[0, 1, 0] == 128

    c16 = np.zeros((8, 8, 3), np.uint16)
    c16[..., 0], c16[..., 1], c16[..., 2] = 65535, 32768, 1000
    png16_rgb(tmp_path / "c16.png", c16)
    assert tuple(read_rgb(tmp_path / "c16.png")[0, 0]) in {(255, 128, 3), (255, 128, 4)}

    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(tmp_path / "x.bmp")
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(tmp_path / "x.jpg", quality=95)
    Image.fromarray(grey).convert("1").save(tmp_path / "bw.png")
    Image.fromarray(np.stack([grey, grey], -1), "LA").save(tmp_path / "la.png")
    for name in ("x.bmp", "x.jpg", "bw.png", "la.png"):
        a = read_rgb(tmp_path / name)
        assert a.dtype == np.uint8 and a.shape == (8, 8, 3), name
    assert abs(int(read_rgb(tmp_path / "x.jpg")[4, 4, 0]) - 77) <= 2


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


def test_read_mask_counts_any_nonzero(tmp_path):
    write_mask(tmp_path / "m.png", 4, value=1)
    assert read_mask(tmp_path / "m.png").sum() == 4 * S
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[:2, :, 2] = 1
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").sum() == 2 * S


def test_prepare_image_matches_dataset(tmp_path):
    rgb = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    tensor, display = prepare_image(read_rgb(tmp_path / "x.png"), 20)
    assert tensor.shape == (3, 20, 20) and display.shape == (20, 20, 3) and display.dtype == np.uint8
    back = data.denormalise(tensor)
    assert np.abs(back.astype(int) - display).max() <= 1


# ----------------------------------------------------------------------------- other layouts


def test_visa_split_masks_valued_one_and_defect_names(tmp_path):
    build_visa(tmp_path, mask_value=1)
    train = open_dataset(tmp_path, "visa", "train", image_size=S)
    test = open_dataset(tmp_path, "visa", "test", image_size=S)
    assert len(train) == 4 and train.classes == ["candle", "pcb1"]
    assert len(test) == 6 and sum(test.labels) == 4
    assert sorted({r.defect for r in test.records}) == ["chunk missing", "good", "scratch"]
    by_path = {r["image_path"]: int(r["gt_mask"].sum()) for r in test}
    assert by_path[str(tmp_path / "candle/Data/Images/Anomaly/000.JPG")] == 2 * S
    assert by_path[str(tmp_path / "pcb1/Data/Images/Anomaly/001.JPG")] == 5 * S


def test_realiad_views_resolution_and_masks(tmp_path):
    build_realiad(tmp_path)
    os.makedirs(tmp_path / "realiad_512")  # a second resolution: must be chosen explicitly
    with pytest.raises(DataError, match="resolution"):
        open_dataset(tmp_path, "realiad", "test")
    test = open_dataset(tmp_path, "realiad", "test", resolution="256", image_size=S)
    assert len(test) == 2 * 4 and sum(test.labels) == 4
    assert {r.defect for r in test.records} == {"good", "AK"}
    c1 = open_dataset(tmp_path, "realiad", "test", resolution="256", views=("C1",), image_size=S)
    assert len(c1) == 4 and all("_C1_" in r.image_path for r in c1.records)
    by_view = {("C1" if "_C1_" in r["image_path"] else "C2"): int(r["gt_mask"].sum()) for r in test if r["gt_label"]}
    assert by_view == {"C1": 2 * S, "C2": 7 * S}
    train = open_dataset(tmp_path, "realiad", "train", resolution="256", classes=["woodstick"], variant="realiad_jsons")
    assert len(train) == 2 and train.classes == ["woodstick"]


def test_realiad_lists_many_items_quickly(tmp_path, monkeypatch):
    """Listing goes by the json and file names only."""
    import time

    cls, n = "pcb", 3000
    base = tmp_path / "realiad_1024" / cls / "OK" / "S0001"
    os.makedirs(base)
    items = []
    for i in range(n):
        name = f"{cls}_{i:04d}_OK_C{i % 5 + 1}_2023.jpg"
        (base / name).touch()  # empty: listing must not read it
        items.append({"image_path": f"OK/S0001/{name}", "anomaly_class": "OK", "mask_path": None})
    os.makedirs(tmp_path / "realiad_jsons")
    with open(tmp_path / "realiad_jsons" / f"{cls}.json", "w") as f:
        json.dump({"train": items, "test": []}, f)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("opened an image"))
    t = time.perf_counter()
    ds = open_dataset(tmp_path, split="train", views=["C3"])
    assert time.perf_counter() - t < 2.0
    assert len(ds) == n // 5


def test_btad_layout(tmp_path):
    build_btad(tmp_path)
    assert len(open_dataset(tmp_path, "btad", "train")) == 4
    test = open_dataset(tmp_path, "btad", "test", image_size=S)
    assert len(test) == 8 and {r.defect for r in test.records} == {"good", "ko"}
    assert sorted(int(r["gt_mask"].sum()) for r in test if r["gt_label"]) == [3 * S, 3 * S, 5 * S, 5 * S]


def test_loco_multiple_masks_are_ored(tmp_path):
    build_loco(tmp_path)
    assert len(open_dataset(tmp_path, "mvtec_loco", "train")) == 2
    assert len(open_dataset(tmp_path, "mvtec_loco", "train", include_validation=True)) == 4
    test = open_dataset(tmp_path, "mvtec_loco", "test", image_size=S)
    assert {r.defect for r in test.records} == {"good", "logical_anomalies", "structural_anomalies"}
    rec = next(r for r in test.records if r.defect == "logical_anomalies")
    assert len(rec.mask_paths) == 2
    areas = {r["defect"]: int(r["gt_mask"].sum()) for r in test if r["gt_label"]}
    assert areas == {"logical_anomalies": (2 + 3) * S, "structural_anomalies": 4 * S}


def test_missing_mask_names_the_image_and_where_the_mask_should_be(tmp_path):
    build_mvtec(tmp_path / "mvtec", classes=("bottle",))
    os.remove(tmp_path / "mvtec" / "bottle" / "ground_truth" / "crack" / "10_mask.png")
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path / "mvtec", "mvtec", "test")
    assert os.path.join("crack", "10.png") in str(err.value)
    assert os.path.join("ground_truth", "crack", "10_mask.png") in str(err.value)
    build_loco(tmp_path / "loco")
    mask_dir = tmp_path / "loco" / "juice_bottle" / "ground_truth" / "structural_anomalies" / "000"
    os.remove(mask_dir / "000.png")
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path / "loco", "mvtec_loco", "test")
    assert os.path.join("structural_anomalies", "000.png") in str(err.value)
    assert str(mask_dir) in str(err.value)
    build_ader(tmp_path / "ader")
    os.remove(tmp_path / "ader" / "masks" / "grid" / "hole.png")
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path / "ader", "ader", "test")
    assert os.path.join("imgs", "grid", "test", "hole.png") in str(err.value)
    assert os.path.join("masks", "grid", "hole.png") in str(err.value)


def test_mvtec3d_rgb_only(tmp_path):
    build_mvtec3d(tmp_path)
    train = open_dataset(tmp_path, "mvtec3d", "train")
    assert len(train) == 2 and all(os.sep + "rgb" + os.sep in r.image_path for r in train.records)
    test = open_dataset(tmp_path, "mvtec3d", "test", image_size=S)
    assert len(test) == 3 and sum(test.labels) == 1
    assert [int(r["gt_mask"].sum()) for r in test if r["gt_label"]] == [6 * S]
    assert all(r.mask_paths == () for r in test.records if r.label == 0)


def test_ader_meta_json(tmp_path):
    build_ader(tmp_path)
    assert len(open_dataset(tmp_path, "ader", "train")) == 4
    test = open_dataset(tmp_path, "ader", "test", image_size=S)
    assert len(test) == 4 and test.classes == ["capsule", "grid"]
    assert {r.defect for r in test.records} == {"good", "hole"}
    assert [int(r["gt_mask"].sum()) for r in test if r["gt_label"]] == [3 * S, 3 * S]


def test_folder_layout(tmp_path):
    for i in range(3):
        write_img(tmp_path / "ok_a" / f"{i}.png")
        write_img(tmp_path / "ok_b" / f"{i}.jpg")
    write_img(tmp_path / "holdout" / "n.png")
    write_img(tmp_path / "dents" / "7.png")
    write_img(tmp_path / "dents" / "8.png")
    write_img(tmp_path / "burns" / "7.png")
    write_mask(tmp_path / "gt" / "dents" / "7_mask.png", 2)
    write_mask(tmp_path / "gt" / "dents" / "8.png", 3)
    write_mask(tmp_path / "gt" / "burns" / "7.png", 5)
    opts = dict(normal_dirs=["ok_a", "ok_b"], class_name="widget")
    train = open_dataset(tmp_path, "folder", "train", **opts)
    assert len(train) == 6 and train.classes == ["widget"]
    test = open_dataset(
        tmp_path, "folder", "test", image_size=S, test_normal_dirs="holdout",
        defect_dirs=[tmp_path / "dents", "burns"], mask_dirs="gt", **opts,
    )
    assert len(test) == 4 and test.has_masks
    areas = {(r["defect"], os.path.basename(r["image_path"])): int(r["gt_mask"].sum()) for r in test}
    assert areas == {("good", "n.png"): 0, ("dents", "7.png"): 2 * S, ("dents", "8.png"): 3 * S, ("burns", "7.png"): 5 * S}
    named = open_dataset(tmp_path, "folder", "test", defect_dirs={"dent": "dents"}, test_normal_dirs="holdout", **opts)
    assert {r.defect for r in named.records} == {"good", "dent"} and not named.has_masks
    with pytest.warns(DataWarning, match="no normal images"):
        open_dataset(tmp_path, "folder", "test", defect_dirs=["dents"], **opts)
    with pytest.raises(DataError, match="8.png"):
        open_dataset(tmp_path, "folder", "test", defect_dirs=["dents"], mask_dirs={"dents": "gt/burns"}, test_normal_dirs="holdout", **opts)


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_detect_layout(tmp_path, layout):
    BUILDERS[layout](tmp_path)
    assert detect_layout(tmp_path) == layout
    assert open_dataset(tmp_path, split="test").layout == layout


def test_detect_layout_ambiguous_and_unknown(tmp_path):
    both = build_mvtec(tmp_path / "both")
    (both / "meta.json").write_text('{"train": {}, "test": {}}')
    with pytest.raises(DataError, match=r"ambiguous.*ader.*mvtec|ambiguous.*mvtec.*ader"):
        detect_layout(both)
    assert open_dataset(both, "mvtec").layout == "mvtec"
    odd = tmp_path / "odd"
    write_img(odd / "pictures" / "a.png")
    with pytest.raises(DataError) as err:
        open_dataset(odd)
    assert "unknown dataset layout" in str(err.value) and "pictures" in str(err.value)
    assert "mvtec:" in str(err.value) and "train/good" in str(err.value)
    with pytest.raises(DataError, match="not found"):
        detect_layout(tmp_path / "missing")


def test_argument_errors(tmp_path):
    build_mvtec(tmp_path)
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path, classes=["bottle", "nope"])
    assert "nope" in str(err.value) and "bottle, cable" in str(err.value)
    with pytest.raises(ValueError, match="views"):
        open_dataset(tmp_path, "mvtec", views=("C1",))
    with pytest.raises(ValueError, match="unknown layout"):
        open_dataset(tmp_path, "mvtek")
    with pytest.raises(ValueError, match="split"):
        open_dataset(tmp_path, split="val")
    with pytest.raises(ValueError, match="on_error"):
        open_dataset(tmp_path, on_error="ignore")


# ----------------------------------------------------------------------------- bad input


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


def test_missing_mask_is_an_error_or_skipped(tmp_path):
    build_mvtec(tmp_path, classes=("bottle",))
    os.remove(tmp_path / "bottle" / "ground_truth" / "crack" / "2_mask.png")
    with pytest.raises(DataError) as err:
        open_dataset(tmp_path, split="test")
    assert str(tmp_path / "bottle" / "test" / "crack" / "2.png") in str(err.value)
    assert "2_mask.png" in str(err.value)
    with pytest.warns(DataWarning) as caught:
        ds = open_dataset(tmp_path, split="test", on_error="skip")
    assert len(ds) == 5 and len(ds.skipped) == 1 and ds.skipped[0].path.endswith("2.png")
    assert sum("skipped 1 file" in str(w.message) for w in caught) == 1


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


def test_empty_class_folder(tmp_path):
    build_mvtec(tmp_path, classes=("bottle", "cable"))
    for f in (tmp_path / "cable" / "train" / "good").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"cable.train.good"):
        open_dataset(tmp_path)
    with pytest.warns(DataWarning) as caught:
        ds = open_dataset(tmp_path, on_error="skip")
    assert ds.classes == ["bottle"] and len(ds) == 3
    assert any("no images" in str(w.message) for w in caught)


def test_split_files_naming_missing_files(tmp_path):
    build_visa(tmp_path / "visa")
    os.remove(tmp_path / "visa" / "pcb1" / "Data" / "Images" / "Normal" / "0001.JPG")
    with pytest.raises(DataError, match="0001.JPG.*1cls.csv"):
        open_dataset(tmp_path / "visa", split="train")
    with pytest.warns(DataWarning):
        assert len(open_dataset(tmp_path / "visa", split="train", on_error="skip")) == 3
    os.remove(tmp_path / "visa" / "candle" / "Data" / "Masks" / "Anomaly" / "001.png")
    with pytest.raises(DataError, match="candle.Data.Images.Anomaly.001.JPG"):
        open_dataset(tmp_path / "visa", split="test")

    build_realiad(tmp_path / "riad")
    victim = next((tmp_path / "riad" / "realiad_256" / "woodstick" / "OK" / "S0002").iterdir())
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        open_dataset(tmp_path / "riad", split="test")

    build_ader(tmp_path / "ader")
    os.remove(tmp_path / "ader" / "imgs" / "grid" / "train" / "1.png")
    with pytest.raises(DataError, match=r"grid.train.1\.png"):
        open_dataset(tmp_path / "ader")


def test_malformed_split_files(tmp_path):
    build_realiad(tmp_path / "riad")
    (tmp_path / "riad" / "realiad_jsons" / "realiad_jsons" / "audiojack.json").write_text("{not json")
    with pytest.raises(DataError, match="audiojack.json"):
        open_dataset(tmp_path / "riad", classes="audiojack")
    build_visa(tmp_path / "visa")
    (tmp_path / "visa" / "split_csv" / "1cls.csv").write_text("object,image\ncandle,x.JPG\n")
    with pytest.raises(DataError, match="1cls.csv.*split, label, mask"):
        open_dataset(tmp_path / "visa")
    build_ader(tmp_path / "ader")
    (tmp_path / "ader" / "meta.json").write_text('{"train": [1, 2]}')
    with pytest.raises(DataError, match="meta.json"):
        open_dataset(tmp_path / "ader", "ader")


def test_nothing_escapes_as_bare_errors(tmp_path):
    """Every bad-input case surfaces as DataError, never KeyError or PIL's OSError."""
    build_ader(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["test"]["grid"].append({"mask_path": ""})  # no img_path
    meta["test"]["grid"].append({"img_path": "imgs/grid/test/ok.png", "anomaly": 1, "mask_path": ""})
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="no img_path"):
        open_dataset(tmp_path, "ader", "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = open_dataset(tmp_path, "ader", "test", on_error="skip")
    assert len(ds) == 4 and len(ds.skipped) == 2
    with pytest.raises(DataError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")
