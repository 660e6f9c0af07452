"""VisA: the split CSV, masks valued 1, defect names from image_anno.csv."""
from __future__ import annotations

from layout_builders import S, build_visa
from mtad.data import open_dataset


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
