"""Runs, exports and training states written before the run file had one home
(issue 18; tests/data/format2, made by tests/data/make_format2_run.py at f312845)
load, score and resume as they did."""
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import recorded_inputs, unpack_test_data, write_tiny_mvtec
from test_official import assert_same_scores

from mtad.runfile import load_run

FORMAT2 = Path(__file__).parent / "data" / "format2"


@pytest.fixture(scope="module")
def format2(tmp_path_factory):
    """tests/data/format2 with its last.pt files and model.onnx unpacked (stored gzipped)."""
    return unpack_test_data(FORMAT2, tmp_path_factory.mktemp("format2"))


def torch_scores(run):
    from mtad.deploy.torch_model import Normalised

    _, x = recorded_inputs(FORMAT2)
    with torch.no_grad():
        maps, scores = Normalised(run.model).eval()(torch.from_numpy(x))
    return maps.numpy(), scores.numpy()


@pytest.mark.parametrize("name", ["run", "stopped"])
def test_format2_runs_load_and_score_as_before(format2, name):
    recorded, _ = recorded_inputs(FORMAT2)
    run = load_run(format2 / name)
    prefix = "torch" if name == "run" else "stopped"
    assert_same_scores(*torch_scores(run), recorded[f"{prefix}_anomaly_map"],
                       recorded[f"{prefix}_pred_score"])
    assert run.epoch == (2 if name == "run" else 1) and run.class_names == ["alpha", "beta"]
    assert run.model.map_divisor == 9.0 and run.config.train.epochs == 2
    assert run.thresholds["epoch"] == run.epoch and run.thresholds["source"] == "test split"
    assert [h["epoch"] for h in run.history] == list(range(1, run.epoch + 1))
    assert len(run.train_loss) == 3 * run.epoch   # 12 images, batches of 4


def test_format2_export_scores_as_before(format2):
    pytest.importorskip("onnxruntime")
    from mtad.calibration import Thresholds
    from mtad.deploy.inferencer import ExportedModel

    recorded, x = recorded_inputs(FORMAT2)
    model = ExportedModel(format2 / "export")
    assert_same_scores(*model.predict(x), recorded["onnx_anomaly_map"], recorded["onnx_pred_score"])
    assert model.thresholds == Thresholds.from_legacy(load_run(format2 / "run").thresholds)


def test_format2_stopped_run_resumes_where_it_stopped(format2, tmp_path):
    """The stopped run (epoch 1 of 2, with its optimizer, scheduler, scaler and RNG
    states) resumed now continues the uninterrupted run: the kept epoch exactly, the
    first resumed step's loss within float32 rounding, the steps taken exactly."""
    from mtad.engine.train import train
    from mtad.runfile import read_run, save_run

    run_dir = tmp_path / "stopped"
    shutil.copytree(format2 / "stopped", run_dir)
    # its config names the data where it was made: the same tiny set (seed 0), written here
    record = read_run(run_dir / "last.pt")
    record.config["data"]["root"] = str(write_tiny_mvtec(tmp_path / "mvtec"))
    save_run(record, run_dir / "last.pt")
    train(None, resume=run_dir, log=lambda *a: None)
    resumed, full = load_run(run_dir), load_run(format2 / "run")
    assert resumed.epoch == 2
    a, b = resumed.model.state_dict(), full.model.state_dict()
    assert list(a) == list(b)
    # The saved epoch is kept as it was, and the first resumed step sees the saved weights
    # and the batch the restored RNG draws: its loss is one forward pass, equal to the
    # uninterrupted run's up to float32 rounding of its sums in another kernel order
    # (1e-5 relative; measured 7.5e-8 under ATEN_CPU_CAPABILITY=avx2).
    n = len(full.train_loss) // 2
    assert resumed.train_loss[:n] == full.train_loss[:n]
    assert resumed.train_loss[n][0] == full.train_loss[n][0]
    assert resumed.train_loss[n][1] == pytest.approx(full.train_loss[n][1], rel=1e-5)
    # Later steps are not compared, not even on a CPU of the ISA the data was made on: the
    # float32 kernels torch (oneDNN) picks depend on the CPU model, not only its ISA (CI's
    # AVX-512 machine differed in bits where this one matched), and AdamW normalises each
    # update, so a rounding difference in a near-zero gradient moves a weight by up to the
    # learning rate (measured 1e-4 after 3 steps under avx2): a trajectory, not a bound.
    # What is deterministic is compared: the steps taken and the evaluated epochs.
    assert [s for s, _ in resumed.train_loss] == [s for s, _ in full.train_loss]
    strip = [{k: v for k, v in h.items() if k != "elapsed"} for h in resumed.history]
    assert len(strip) == 2 and strip[0] == {k: v for k, v in full.history[0].items()
                                             if k != "elapsed"}


# -- the selective-scan backend: a run-time choice, never stored in a run ----------------

def test_a_saved_run_holds_no_scan_backend(trained_run):
    from mtad.runfile import read_run

    assert "scan_backend" not in read_run(trained_run).config["model"]
    assert "scan_backend" not in (trained_run / "config.yaml").read_text()


def test_a_run_that_saved_a_scan_backend_loads_and_ignores_it(format2, tmp_path):
    """A run of an older mtad trained with model.scan_backend=cpp opens anywhere (a GPU
    too): the saved value is ignored with a note, and the process's choice applies."""
    from mtad.config import ConfigNote, load_config
    from mtad.runfile import read_run, save_run

    run_dir = tmp_path / "run"
    shutil.copytree(format2 / "run", run_dir)
    record = read_run(run_dir)
    record.config["model"]["scan_backend"] = "cpp"
    save_run(record, run_dir / "last.pt")
    with pytest.warns(ConfigNote, match=r"model.scan_backend=cpp: .*run-time choice.*ignored"):
        run = load_run(run_dir)
    assert run.model.scan_backend is None
    recorded, _ = recorded_inputs(FORMAT2)
    assert_same_scores(*torch_scores(run), recorded["torch_anomaly_map"],
                       recorded["torch_pred_score"])
    with pytest.warns(ConfigNote):   # an old YAML config (or override) the same
        cfg = load_config(None, ["model.scan_backend=cpp"])
    assert "scan_backend" not in cfg.to_dict()["model"]


def test_the_scan_backend_reaches_every_mixer(trained_run, data_root, tmp_path, monkeypatch):
    """--scan-backend sets the process's choice (MTAD_SCAN_BACKEND) that every selective
    scan of the model reads; in Python, the model's scan_backend attribute."""
    from mtad.cli import SCAN_BACKENDS, main
    from mtad.models import mamba
    from mtad.ops.scan import BACKENDS, ENV_VAR

    assert set(SCAN_BACKENDS) == set(BACKENDS) - {"export"} | {"auto"}
    seen = []
    real = mamba.selective_scan

    def spy(*args, **kwargs):
        seen.append((kwargs.get("backend"), os.environ.get(ENV_VAR)))
        return real(*args, **kwargs)

    monkeypatch.setattr(mamba, "selective_scan", spy)
    monkeypatch.setenv(ENV_VAR, "chunked")           # restored after the test
    image = data_root / "alpha" / "test" / "good" / "000.png"
    assert main(["predict", "--checkpoint", str(trained_run), str(image), "--out",
                 str(tmp_path / "out"), "--scan-backend", "reference", "--device", "cpu"]) == 0
    assert seen and set(seen) == {(None, "reference")}
    seen.clear()
    model = load_run(trained_run).model
    model.scan_backend = "chunked"
    with torch.no_grad():
        model.predict(torch.zeros(1, 3, 64, 64))
    assert seen and {backend for backend, _ in seen} == {"chunked"}
    assert not hasattr(model.config, "scan_backend")
