"""Train, resume, evaluate (also over 2 processes), predict: the user's workflow end to end
on a tiny dataset and a tiny model, on CPU."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mtad.config import load_config
from mtad.runfile import read_run
from mtad.deploy import open_model
from mtad.engine.predict import predict
from mtad.engine.train import TrainingDiverged, train

from conftest import run_cli, tiny_overrides  # noqa: E402


def test_training_writes_results_checkpoint_and_logs(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    assert results["epoch"] == 2
    assert set(results["classes"]) == {"alpha", "beta"}
    for metrics in (results["mean"], *results["classes"].values()):
        assert set(metrics) >= {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc",
                                "pixel_ap", "pixel_f1_max", "pixel_aupro", "pixel_iou_max", "mad"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in metrics.values())
    assert "| alpha |" in (trained_run / "results.md").read_text()
    page = (trained_run / "report.html").read_text()
    assert page.count('width="192"') == 9  # 3 examples x (image, truth, map)
    for plot in ("loss.png", "metrics.png", "scores.png"):  # the training, drawn
        assert f'src="report_images/{plot}"' in page and (trained_run / "report_images" / plot).stat().st_size > 5000
    assert '<table class="metrics">' in page and "<td>alpha</td>" in page  # a real table
    assert "<pre>" not in page
    assert any((trained_run / "tensorboard").iterdir())
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["model"]["depths"] == [1, 1, 1, 1]
    record = read_run(trained_run / "last.pt")  # weights_only=True inside
    assert record.epoch == 2 and record.resumable   # optimizer, scaler, rng
    assert record.thresholds["source"] == "test split"
    assert not list(trained_run.glob("*.tmp"))


def test_existing_run_is_never_overwritten(trained_run, data_root):
    before = (trained_run / "last.pt").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--resume"):
        train(load_config(None, tiny_overrides(data_root, trained_run)))
    assert (trained_run / "last.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(data_root, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({}))
    full = run_cli("train", "-c", str(cfg_path),
                   *tiny_overrides(data_root, tmp_path / "full", epochs=4))
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtad", "train", "-c", str(cfg_path),
         *tiny_overrides(data_root, tmp_path / "cut", epochs=4)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpt = tmp_path / "cut" / "last.pt"
        if ckpt.exists() and read_run(ckpt).epoch >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = read_run(tmp_path / "cut" / "last.pt").epoch
    assert 1 <= stopped_at < 4
    resumed = run_cli("train", "--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr
    a = read_run(tmp_path / "full" / "last.pt").model
    b = read_run(tmp_path / "cut" / "last.pt").model
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_loader_workers_do_not_change_training(data_root, tmp_path):
    # One DataLoader serves the whole run (its workers persist between epochs) and
    # draws from a generator of its own: with or without workers, drop path sees the
    # same random numbers, so the weights after two epochs are identical.
    weights = []
    for workers in (0, 1):
        cfg = load_config(None, [*tiny_overrides(data_root, tmp_path / f"w{workers}"),
                                 f"data.num_workers={workers}", "model.drop_path=0.5"])
        weights.append(read_run(train(cfg, log=lambda *a: None)).model)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    from mtad.models import MTAD

    calls = {"n": 0}
    real_loss = MTAD.loss

    def loss_that_explodes(self, images):
        calls["n"] += 1
        loss = real_loss(self, images)
        return loss * float("nan") if calls["n"] > 4 else loss  # 4 steps = epoch 1

    monkeypatch.setattr(MTAD, "loss", loss_that_explodes)
    cfg = load_config(None, tiny_overrides(data_root, tmp_path / "nan", epochs=3))
    with pytest.raises(TrainingDiverged, match="last good checkpoint .*epoch 1"):
        train(cfg, log=lambda *a: None)
    record = read_run(tmp_path / "nan" / "last.pt")
    assert record.epoch == 1
    assert all(torch.isfinite(v).all() for v in record.model.values() if v.is_floating_point())


def test_predict_writes_unique_outputs_and_skips_bad_files(trained_run, data_root, tmp_path):
    for name in ("a", "b"):
        folder = tmp_path / "inputs" / name
        folder.mkdir(parents=True)
        Image.open(data_root / "alpha/test/square/000.png").resize((90, 70)).save(folder / "same.png")
    (tmp_path / "inputs" / "a" / "broken.png").write_bytes(b"not an image")
    grey = tmp_path / "grey.jpg"
    Image.fromarray(np.full((50, 80), 128, np.uint8)).save(grey)
    out = tmp_path / "pred"
    summary = predict(open_model(trained_run / "last.pt"), [tmp_path / "inputs", grey], out,
                      log=lambda *a: None)
    assert summary["processed"] == 3 and len(summary["skipped"]) == 1
    assert "broken.png" in summary["skipped"][0]
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 3 and {r["image_path"].split("/")[-2] for r in rows} >= {"a", "b"}
    overlays = sorted(p.name for p in out.glob("*_overlay.png"))
    assert len(overlays) == 3 and len(list(out.glob("*_pred_mask.png"))) == 3
    assert not list(out.glob("*[!d]_mask.png"))  # MVTec's ground-truth suffix is not ours
    mask = np.asarray(Image.open(out / "inputs__a__same_pred_mask.png"))
    assert mask.shape == (70, 90) and set(np.unique(mask)) <= {0, 255}
    thr = read_run(trained_run).thresholds["image"]
    assert all(int(r["pred_label"]) == (float(r["pred_score"]) >= thr) for r in rows)
    assert all(r["verdict"] == ("NG" if r["pred_label"] == "1" else "OK") for r in rows)
    for r in rows:   # the mask agrees with the verdict (decide): empty exactly for OK
        stem = Path(r["image_path"]).stem
        found = [p for p in out.glob(f"*{stem}_pred_mask.png")]
        assert found and (np.asarray(Image.open(found[0])).any() == (r["verdict"] != "OK"))
    assert all(r["image_threshold_source"].startswith("pooled (test split") for r in rows)
    forced = predict(open_model(trained_run), [grey], tmp_path / "pred2", threshold=-1.0,
                     log=lambda *a: None)
    assert forced["anomalous"] == 1 and forced["image_threshold_source"] == "command line"


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process(trained_run, tmp_path):
    # One thread everywhere, so that both runs do the same float operations.
    single = run_cli("test", "--checkpoint", str(trained_run), "--out", str(tmp_path / "one"),
                     env_extra={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    env = {"OMP_NUM_THREADS": "1"}
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mtad", "test", "--checkpoint", str(trained_run), "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["classes"].keys() == two["classes"].keys()
    for cls in one["classes"]:
        for key, value in one["classes"][cls].items():
            # the same weights and images on one machine, only the batches differ: the maps
            # differ by float32 rounding (~1e-7), which moves rank metrics by a swapped near-tie
            assert two["classes"][cls][key] == pytest.approx(value, abs=1e-6), (cls, key)


@pytest.mark.slow
def test_distributed_training_with_gloo(data_root, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mtad", "train", *tiny_overrides(data_root, out, epochs=1)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    ddp = json.loads((out / "results.json").read_text())
    single = run_cli("test", "--checkpoint", str(out), "--out", str(tmp_path / "check"),
                     env_extra={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    check = json.loads((tmp_path / "check" / "results.json").read_text())
    for key, value in check["mean"].items():
        assert ddp["mean"][key] == pytest.approx(value, abs=1e-6), key   # as in the test above


@pytest.mark.slow
def test_cli_errors_name_the_problem(tmp_path, data_root):
    bad = run_cli("train", "-c", "demo", "data.rooot=/x")
    assert bad.returncode == 2 and "data.rooot" in bad.stderr
    missing = run_cli("predict", "--checkpoint", str(tmp_path / "nope.pt"), str(tmp_path),
                      "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "nope.pt" in missing.stderr
    helptext = run_cli("--help")
    assert helptext.returncode == 0
    for command in ("train", "test", "predict", "demo", "synth", "info"):
        assert command in helptext.stdout


@pytest.mark.slow
def test_info_names_a_run_as_the_other_commands_do(trained_run):
    done = run_cli("info", str(trained_run))
    assert done.returncode == 0, done.stderr
    assert "encoder=efficientnet_lite0" in done.stdout and "input 3x64x64" in done.stdout
    assert "depths=[1, 1, 1, 1]" in done.stdout
    missing = run_cli("info", str(trained_run / "nothing"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
