"""The MVTec family (mvtec, mpdd, btad, mvtec_loco, mvtec3d): one walker, one class test each."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from layout_builders import S, build_ader, build_btad, build_loco, build_mvtec, build_mvtec3d, write_img, write_mask
from mtad.data import LAYOUTS, DataError, DataWarning, detect_layout, open_dataset


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


def test_mvtec3d_rgb_only(tmp_path):
    build_mvtec3d(tmp_path)
    train = open_dataset(tmp_path, "mvtec3d", "train")
    assert len(train) == 2 and all(os.sep + "rgb" + os.sep in r.image_path for r in train.records)
    test = open_dataset(tmp_path, "mvtec3d", "test", image_size=S)
    assert len(test) == 3 and sum(test.labels) == 1
    assert [int(r["gt_mask"].sum()) for r in test if r["gt_label"]] == [6 * S]
    assert all(r.mask_paths == () for r in test.records if r.label == 0)


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


def test_class_folder_with_nothing_but_an_empty_train_good(tmp_path):
    # a class just created for new images (train/good exists, empty, no test yet) is
    # named in the error, not skipped as if it were not a class
    build_mvtec(tmp_path, classes=("bottle",))
    os.makedirs(tmp_path / "screw" / "train" / "good")
    with pytest.raises(DataError, match=r"screw.train.good: class folder has no images"):
        open_dataset(tmp_path)


# ----------------------------------------------------------------------------- detection and listing agree


def btad_test_only(root):
    """BTAD with a class that has test/ko images only (no train/ok, no test/ok)."""
    build_btad(root)
    write_img(root / "03" / "test" / "ko" / "0000.bmp")
    write_mask(root / "03" / "ground_truth" / "ko" / "0000.png", 2)
    return root


def mvtec_without_ground_truth(root):
    """An MVTec class with normal images only (no ground_truth), beside a full one."""
    build_mvtec(root, classes=("bottle",))
    write_img(root / "cable" / "train" / "good" / "000.png")
    write_img(root / "cable" / "test" / "good" / "000.png")
    os.makedirs(root / "notes" / "test")  # not a class: no images, no ground_truth
    return root


def mvtec_test_only(root):
    """Test split only: test/<defect> and ground_truth, no train folder."""
    build_mvtec(root, classes=("bottle",))
    for f in (root / "bottle" / "train" / "good").iterdir():
        f.unlink()
    os.rmdir(root / "bottle" / "train" / "good")
    return root


def mvtec3d_test_only(root):
    build_mvtec3d(root)
    write_img(root / "cookie" / "test" / "good" / "rgb" / "000.png")
    return root


@pytest.mark.parametrize("build, layout, classes", [
    (btad_test_only, "btad", ["01", "02", "03"]),
    (mvtec_without_ground_truth, "mvtec", ["bottle", "cable"]),
    (mvtec_test_only, "mvtec", ["bottle"]),
    (mvtec3d_test_only, "mvtec3d", ["bagel", "cookie"]),
    (build_loco, "mvtec_loco", ["juice_bottle"]),
])
def test_detection_and_listing_agree_on_class_folders(tmp_path, build, layout, classes):
    build(tmp_path)
    assert detect_layout(tmp_path) == layout
    folders = [d for d in sorted(os.listdir(tmp_path)) if LAYOUTS[layout].is_class(str(tmp_path / d))]
    assert folders == classes
    ds = open_dataset(tmp_path, split="test", image_size=S)
    assert ds.layout == layout and ds.classes == classes


def test_btad_anomalies_only_class_is_listed_with_masks(tmp_path):
    btad_test_only(tmp_path)
    test = open_dataset(tmp_path, split="test", classes="03", image_size=S)
    assert [(r.defect, r.label, os.path.basename(r.mask_paths[0])) for r in test.records] == [("ko", 1, "0000.png")]
    assert int(test[0]["gt_mask"].sum()) == 2 * S
    with pytest.raises(DataError, match=r"03.train.ok: class folder has no images \(train/ok\)"):
        open_dataset(tmp_path, split="train")


def test_one_walker_lists_every_test_defect_folder_layout(tmp_path):
    """The same walk for MVTec AD, BTAD, LOCO and 3D-AD: normal folder -> 0, others -> 1."""
    for name, build in (("mvtec", build_mvtec), ("btad", build_btad), ("mvtec_loco", build_loco),
                        ("mvtec3d", build_mvtec3d)):
        build(tmp_path / name)
        test = open_dataset(tmp_path / name, name, "test")
        assert all((r.label == 0) == (r.defect == "good") == (not r.mask_paths) for r in test.records), name
