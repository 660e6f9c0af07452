"""Confirmed parts as a dataset (mtad review export) and the MVTec reader's defect images
without masks (image metrics only for their class)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mtad.cli import main
from mtad.config import load_config
from mtad.data import open_dataset
from mtad.engine.evaluate import evaluate
from mtad.station.log import InspectionLog
from conftest import SIZE, write_tiny_mvtec


def _part(seed):
    return np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)


def test_review_export_writes_confirmed_parts_that_train_and_test_read(tmp_path, capsys):
    db = tmp_path / "inspections.db"
    with InspectionLog(db) as log:
        ids = {}
        for i, (cls, verdict, mark) in enumerate([("alpha", "REVIEW", "good"),
                                                  ("alpha", "NG", "defect"),
                                                  ("alpha", "NG", None),          # not reviewed
                                                  ("beta", "REVIEW", "good"),
                                                  (None, "REVIEW", "good")]):     # no class
            row = log.record(source=f"{i}.png", class_name=cls, pred_score=0.5, verdict=verdict,
                             image=_part(i))
            ids[i] = row["id"]
            if mark:
                log.review(row["id"], mark)
        log.review(ids[3], "defect")    # re-marked: the last mark counts
        log.review(ids[3], "good")
    out = tmp_path / "confirmed"
    assert main(["review", "export", str(db), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 reviewed part(s) were judged without a class" in printed
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        f"alpha/test/defect/{ids[1]}.png", f"alpha/train/good/{ids[0]}.png",
        f"beta/train/good/{ids[3]}.png"]
    kept = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        out / f"alpha/train/good/{ids[0]}.png"))
    assert np.array_equal(kept, _part(0))
    train = open_dataset(out, split="train", image_size=SIZE)
    test = open_dataset(out, split="test", image_size=SIZE, classes=["alpha"])
    assert train.classes == ["alpha", "beta"] and len(train) == 2
    assert [(r.label, r.mask_paths) for r in test.records] == [(1, ())]
    assert test.classes_without_masks == ["alpha"]
    # with --class the pooled part is exported too
    assert main(["review", "export", str(db), "--out", str(out), "--class", "beta"]) == 0
    assert (out / f"beta/train/good/{ids[4]}.png").is_file()


def test_mvtec_defects_without_ground_truth_get_image_metrics_only(tmp_path):
    root = write_tiny_mvtec(tmp_path / "mvtec")
    # beta's defects lose their ground-truth folder: read without masks; alpha keeps its masks
    import shutil
    shutil.rmtree(root / "beta" / "ground_truth")
    ds = open_dataset(root, split="test", image_size=SIZE)
    assert ds.classes_without_masks == ["beta"]
    assert all(r.mask_paths for r in ds.records if r.label and r.class_name == "alpha")

    class Brightness(torch.nn.Module):   # a stand-in model: the map is the image's brightness
        def predict(self, images):
            amap = images.mean(1, keepdim=True)
            return SimpleNamespace(anomaly_map=amap, pred_score=amap.amax((1, 2, 3)))

    cfg = load_config(None, ["data.num_workers=0", "data.test_batch_size=4"])
    res = evaluate(Brightness(), ds, cfg, torch.device("cpu"), progress=False)
    assert res["classes"]["alpha"]["image_auroc"] is not None and res["classes"]["alpha"]["pixel_auroc"] \
        is not None
    assert res["classes"]["beta"]["image_auroc"] is not None and res["classes"]["beta"]["pixel_auroc"] is None
    assert "without ground-truth masks" in res["notes"]["beta"]
    # a ground-truth folder that lacks one image's mask is still an error
    (root / "beta" / "ground_truth" / "square").mkdir(parents=True)
    with pytest.raises(Exception, match="no mask"):
        open_dataset(root, split="test", image_size=SIZE)
