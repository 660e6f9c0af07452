"""Real-IAD json listings and ADer's meta.json."""
from __future__ import annotations

import json
import os
import warnings

import pytest
from PIL import Image

from layout_builders import S, build_ader, build_realiad, build_visa
from mtad.data import DataError, DataWarning, open_dataset, read_rgb


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


def test_realiad_lists_many_items_without_opening_them(tmp_path, monkeypatch):
    """Listing goes by the json and file names only (how fast: benchmarks/data.py)."""
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
    ds = open_dataset(tmp_path, split="train", views=["C3"])
    assert len(ds) == n // 5 and all("_C3_" in r.image_path for r in ds.records)


def test_ader_meta_json(tmp_path):
    build_ader(tmp_path)
    assert len(open_dataset(tmp_path, "ader", "train")) == 4
    test = open_dataset(tmp_path, "ader", "test", image_size=S)
    assert len(test) == 4 and test.classes == ["capsule", "grid"]
    assert {r.defect for r in test.records} == {"good", "hole"}
    assert [int(r["gt_mask"].sum()) for r in test if r["gt_label"]] == [3 * S, 3 * S]


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
