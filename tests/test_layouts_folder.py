"""The folder layout: your own folders, masks found by stem."""
from __future__ import annotations

import os

import pytest

from layout_builders import S, write_img, write_mask
from mtad.data import DataError, DataWarning, open_dataset


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
