"""`mtad calibrate` end to end on a tiny untrained model: versions, classes, refusals,
verdicts in predict, `mtad info`, and calibrations carried by `mtad export`."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_untrained_run, tiny_overrides, write_tiny_mvtec
from mtad.calibration import CALIBRATION_FILE
from mtad.cli import main
from mtad.config import load_config
from mtad.deploy import open_model
from mtad.engine.predict import predict
from mtad.runfile import read_run, save_run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    top = tmp_path_factory.mktemp("cal")
    data = write_tiny_mvtec(top / "mvtec", seed=3)
    run = save_untrained_run(top / "run", tiny_overrides(data, top / "run"))
    # 12 good parts a class, in <class>/ folders (what --good reads)
    more = write_tiny_mvtec(top / "more", seed=11, n_train=12, n_good=0, n_defect=0)
    good = top / "good"
    good.mkdir()
    for cls in ("alpha", "beta"):
        (more / cls / "train" / "good").rename(good / cls)
    return {"top": top, "data": data, "run": run, "good": good}


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def versions(folder):
    return json.loads((Path(folder) / CALIBRATION_FILE).read_text())


def test_calibrate_a_run_then_predict_gives_verdicts(setup, capsys, tmp_path):
    run, good = setup["run"], setup["good"]
    code, out, err = cli(capsys, "calibrate", run, "--good", good, "--device", "cpu")
    assert code == 0, err
    assert "checked against the 12 training images" in out
    assert "12 images guarantee at best 0.221" in out and "needs 299" in out   # 1 - 0.05^(1/12)
    data = versions(run)
    assert data["active"] == 1 and [v["version"] for v in data["versions"]] == [1]
    v1 = data["versions"][0]
    assert v1["method"] == "good-part quantile" and set(v1["classes"]) == {"alpha", "beta"}
    alpha = v1["classes"]["alpha"]
    assert alpha["rule"] == ">" and alpha["ng_threshold"] is None
    assert alpha["image_threshold"] == max(alpha["scores"]) and len(alpha["scores"]) == 12
    assert alpha["provenance"]["n_images"] == 12 and v1["pooled"]["provenance"]["n_images"] == 24
    assert v1["checkpoint_sha256"] == open_model(run, "cpu").run.sha256()

    model = open_model(run, "cpu")
    assert model.thresholds.version == 1
    summary = predict(model, [good / "alpha", setup["data"] / "alpha/test/square"], tmp_path / "o",
                      class_name="alpha", log=lambda *a: None)
    rows = list(csv.DictReader(open(tmp_path / "o" / "scores.csv")))
    thr = alpha["image_threshold"]
    # scores.csv rounds to 6 digits, and batches of another composition may move a
    # score by float rounding: only rows that close to the threshold may go either way
    near = [abs(float(r["pred_score"]) - thr) <= 1e-5 * abs(thr) for r in rows]
    assert all(r["verdict"] == ("REVIEW" if float(r["pred_score"]) > thr else "OK")
               for r, n in zip(rows, near) if not n)
    assert all(r["verdict"] == "OK" for r, n in zip(rows, near)
               if "/good/" in r["image_path"] and not n)   # the calibration images pass
    assert summary["verdicts"]["NG"] == 0          # no NG level from good parts by default
    for r in rows:
        stem = "__".join(Path(r["image_path"]).with_suffix("").parts[-2:])
        mask = np.asarray(Image.open(tmp_path / "o" / f"{stem}_pred_mask.png"))
        assert mask.any() == (r["verdict"] != "OK"), r


def test_second_calibration_keeps_other_classes_and_activate_switches(setup, capsys):
    run, good = setup["run"], setup["good"]
    before = versions(run)
    code, out, err = cli(capsys, "calibrate", run, "--good", good / "alpha", "--class", "alpha",
                         "--false-reject", "0.2", "--ng-false-reject", "0.05", "--device", "cpu")
    assert code == 0, err
    assert "kept the previous thresholds of beta" in out and "both hold together at 0.95" in out
    data = versions(run)
    assert data["active"] == 2 and data["versions"][0] == before["versions"][0]
    v2 = data["versions"][1]
    assert v2["classes"]["beta"] == before["versions"][0]["classes"]["beta"]
    assert v2["classes"]["alpha"]["ng_threshold"] >= v2["classes"]["alpha"]["image_threshold"]
    assert v2["pooled"]["provenance"]["n_images"] == 12
    code, out, _ = cli(capsys, "calibrate", run, "--activate", "1", "--device", "cpu")
    assert code == 0 and "v1" in out and versions(run)["active"] == 1
    code, out, _ = cli(capsys, "info", run)
    assert code == 0 and "* v1" in out and "  v2" in out
    code, out, _ = cli(capsys, "calibrate", run, "--activate", "2", "--device", "cpu")
    assert code == 0 and versions(run)["active"] == 2


@pytest.mark.parametrize("args, message", [
    (["--false-reject", "1.5"], "--false-reject 1.5 is outside (0, 1)"),
    (["--confidence", "0"], "--confidence 0 is outside (0, 1)"),
    (["--ng-false-reject", "0.5"], "must be below --false-reject"),
    (["--class", "gamma"], "'gamma' is not a class of the model"),
    (["--activate", "9"], "no calibration version 9"),
])
def test_bad_input_is_one_line_and_leaves_the_file(setup, capsys, args, message):
    run = setup["run"]
    before = (run / CALIBRATION_FILE).read_bytes()
    code, out, err = cli(capsys, "calibrate", run, "--good", setup["good"], *args, "--device", "cpu")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("mtad calibrate: error: ")
    assert (run / CALIBRATION_FILE).read_bytes() == before


def test_unknown_class_folder_broken_image_and_training_images_are_refused(setup, capsys, tmp_path):
    run = setup["run"]
    before = (run / CALIBRATION_FILE).read_bytes()
    (tmp_path / "odd" / "gamma").mkdir(parents=True)
    shutil.copy(setup["good"] / "alpha" / "000.png", tmp_path / "odd" / "gamma")
    (tmp_path / "broken" / "alpha").mkdir(parents=True)
    (tmp_path / "broken" / "alpha" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "empty" / "beta").mkdir(parents=True)
    for folder, message in [(tmp_path / "odd", "class 'gamma' (from --good) is not a class"),
                            (tmp_path / "broken", "bad.png"),
                            (tmp_path / "empty", "no good images found for class 'beta'"),
                            (setup["data"] / "alpha" / "train", "training images of the model"),
                            (tmp_path / "nowhere", "no such folder")]:
        extra = ["--class", "alpha"] if folder.name == "train" else []
        code, out, err = cli(capsys, "calibrate", run, "--good", folder, *extra, "--device", "cpu")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (folder, err)
    assert (run / CALIBRATION_FILE).read_bytes() == before


def test_a_dataset_root_gives_its_test_good_images(setup, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    (run / CALIBRATION_FILE).unlink(missing_ok=True)
    code, out, err = cli(capsys, "calibrate", run, "--good", setup["data"], "--device", "cpu")
    assert code == 0, err
    assert "good images: alpha 3, beta 3;" in out
    assert "alpha: defective test images passed as OK: " in out and "/3 at the REVIEW level" in out
    assert "(mvtec test split, good images)" in versions(run)["versions"][0]["source"]


def test_calibration_for_another_checkpoint_is_never_applied(setup, tmp_path, caplog):
    from mtad.calibration import CalibrationStore, calibrate_good
    from mtad.files import file_sha256

    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    (run / CALIBRATION_FILE).unlink(missing_ok=True)
    sha = file_sha256(run / "last.pt")
    CalibrationStore(run, sha).add(calibrate_good({"alpha": [0.1, 0.2]}, checkpoint_sha256=sha))
    assert open_model(run, "cpu").thresholds.version == 1
    record = read_run(run)
    record.epoch = 2                                      # a different checkpoint file
    save_run(record, run / "last.pt")
    model = open_model(run, "cpu")
    assert model.thresholds.version is None and model.thresholds.pooled.image == 0.5   # legacy
    assert "another checkpoint" in caplog.text


@pytest.mark.slow
def test_export_carries_the_runs_calibration_and_keeps_its_own(setup, capsys, tmp_path):
    from mtad.deploy.export import export_model

    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    (run / CALIBRATION_FILE).unlink(missing_ok=True)
    for extra in ([], ["--class", "alpha"]):     # v1, then v2 (the active one)
        assert cli(capsys, "calibrate", run, "--good", setup["good"] / ("alpha" if extra else ""),
                   *extra, "--device", "cpu")[0] == 0
    meta = export_model(run, "onnx", out=tmp_path / "exp", log=lambda *a: None)
    exp = Path(meta["path"])
    data = versions(exp)
    assert data["active"] == 1 and len(data["versions"]) == 1
    assert data["versions"][0]["created"] == versions(run)["versions"][1]["created"]  # run's active v2
    # calibrate the export itself, without torch (the inferencer scores), then re-export:
    # both versions are kept
    code = (f"import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
            f"from mtad.cli import main; sys.exit(main(['calibrate', {str(exp)!r}, '--good', "
            f"{str(setup['good'])!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "calibration v2 written" in done.stdout
    assert versions(exp)["active"] == 2
    export_model(run, "onnx", out=exp, log=lambda *a: None)
    data = versions(exp)
    assert [v["version"] for v in data["versions"]] == [1, 2] and data["active"] == 1
    # mtad info on an export lists them without torch
    code = (f"import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\n"
            f"from mtad.cli import main; sys.exit(main(['info', {str(exp)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "* v1" in done.stdout and "  v2" in done.stdout


def test_calibrate_after_training_with_enough_or_too_few_good_images(tmp_path):
    from mtad.engine.train import calibrate_after_training

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"stands in for a checkpoint")
    lines = []
    rng = np.random.default_rng(0)
    made = calibrate_after_training(run, {"a": {"normal": rng.random(299).tolist(), "defective": []},
                                          "b": {"normal": rng.random(300).tolist(), "defective": []}},
                                    lines.append)
    assert made.version == 1 and made.classes["a"].provenance["achieved_false_reject"] <= 0.01
    assert "calibration v1" in lines[-1]
    assert calibrate_after_training(run, {"a": {"normal": [0.1] * 298}}, lines.append) is None
    assert "too few unseen good images" in lines[-1] and "a 298" in lines[-1]
    assert lines[-1].endswith(f"Next: mtad calibrate {run} --good DIR")


def test_a_run_trained_on_good_images_only_says_calibrate_is_next(tmp_path, capsys):
    """No defect anywhere: training ends saying `mtad calibrate` is next (too few
    unseen good images here), and predict's error says the same."""
    from mtad.engine.train import train

    root = write_tiny_mvtec(tmp_path / "data", seed=5)
    for cls in ("alpha", "beta"):
        shutil.rmtree(root / cls / "test" / "square")
        shutil.rmtree(root / cls / "ground_truth")
    lines = []
    cfg = load_config(None, [*tiny_overrides(root, tmp_path / "run", epochs=1), "eval.report_images=0"])
    train(cfg, log=lines.append)
    assert "Next: mtad calibrate" in lines[-1] and "alpha 3" in lines[-1]
    assert not (tmp_path / "run" / CALIBRATION_FILE).exists()
    image = root / "alpha" / "test" / "good" / "000.png"
    code, out, err = cli(capsys, "predict", "--checkpoint", tmp_path / "run", image,
                         "--out", tmp_path / "o", "--device", "cpu")
    assert code == 2 and "mtad calibrate MODEL --good DIR" in err


def test_serve_answers_the_calibrated_verdicts(setup, tmp_path):
    """The API's verdict follows the good-part levels (strictly above: REVIEW; no NG
    level by default) and --save's overlay and CSV row carry it."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mtad.calibration import CalibrationStore, calibrate_good
    from mtad.files import file_sha256
    from mtad.postprocess import select_thresholds, verdict_of
    from mtad.serve.app import create_app

    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    (run / CALIBRATION_FILE).unlink(missing_ok=True)
    sha = file_sha256(run / "last.pt")
    model = open_model(run, "cpu")
    good = sorted((setup["good"] / "alpha").glob("*.png"))
    defect = sorted((setup["data"] / "alpha" / "test" / "square").glob("*.png"))
    from mtad.engine.calibrate import score_images
    scores = score_images(model, good[:6])
    CalibrationStore(run, sha).add(calibrate_good({"alpha": scores}, checkpoint_sha256=sha))
    model = open_model(run, "cpu")
    choice = select_thresholds(model.thresholds, "alpha")
    client = TestClient(create_app(model, save_dir=tmp_path / "kept"))
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in [*good[:6], *defect]]
    body = client.post("/api/predict", files=files, data={"class": "alpha"}).json()
    verdicts = [r["verdict"] for r in body["results"]]
    assert verdicts == [verdict_of(r["pred_score"], choice) for r in body["results"]]
    assert set(verdicts) <= {"OK", "REVIEW"} and verdicts[:6].count("REVIEW") <= 1
    assert all(r["pred_label"] == (r["verdict"] != "OK") for r in body["results"])
    first = body["results"][0]
    assert first["threshold_rule"] == ">" and first["ng_threshold"] is None
    info = client.get("/api/model").json()
    assert info["calibration"]["version"] == 1 and info["calibration"]["method"] == "good-part quantile"
    rows = list(csv.DictReader(open(tmp_path / "kept" / "predictions.csv")))
    assert [r["verdict"] for r in rows] == verdicts
    assert len(list((tmp_path / "kept").glob("*_overlay.png"))) == len(verdicts)
