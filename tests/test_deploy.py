"""Export to ONNX / OpenVINO with proven parity, and the torch-free inferencer.

Tiny models (EfficientNet-Lite0 without weights, depths [1,1,1,1], 64 px) so that an
export takes seconds: the parity figures do not depend on the model's size."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SIZE, THRESHOLDS, TINY_MODEL as TINY, save_untrained_run
from mtad.calibration import Thresholds
from mtad.config import load_config
from mtad.deploy import DeployError, open_model
from mtad.deploy.export import export_model
from mtad.deploy.inferencer import ExportedModel
from mtad.deploy.torch_model import TorchModel
from mtad.ops import selective_scan
from mtad.ops.scan_export import METHODS, selective_scan_export
from mtad.runfile import CheckpointError, load_run, read_run, save_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scan_designs  # noqa: E402  (benchmarks/scan_designs.py: the designs only benchmarks measure)


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return save_untrained_run(tmp_path_factory.mktemp("tiny") / "run")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_run):
    meta = export_model(tiny_run, "onnx", log=quiet)
    return Path(meta["path"])


@pytest.fixture(scope="module")
def trained(trained_run, tmp_path_factory):
    """A copy of the session's briefly trained run (conftest.py), so that exports
    written into its folder do not show in other tests' run."""
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("trained") / "run"))


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def assert_close_to_torch(exported, torch_model, x):
    m_e, s_e = exported.predict(x)
    m_t, s_t = torch_model.predict(x)
    assert m_e.shape == m_t.shape == (len(x), 1, SIZE, SIZE) and s_e.shape == s_t.shape == (len(x),)
    # the exporter's own parity bar (export.MAP_TOLERANCE, SCORE_TOLERANCE): two float32
    # implementations of the whole network (onnxruntime's kernels, torch's), each a few hundred
    # roundings (2^-24 = 6e-8) from the exact result; 1e-4 = 1700 of them, on any CPU
    assert np.abs(m_e - m_t).max() <= 1e-4 * (m_t.max() - m_t.min())
    assert (np.abs(s_e - s_t) / np.abs(s_t)).max() <= 1e-4


# ------------------------------------------------------------------------------------------
# the exportable scan
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS + scan_designs.register())
def test_export_scan_matches_the_reference(method):
    g = torch.Generator().manual_seed(0)
    b, d, n, l = 2, 6, 4, 40
    u, delta, z = (torch.randn(b, d, l, generator=g) for _ in range(3))
    B, C = (torch.randn(b, n, l, generator=g) for _ in range(2))
    A = -torch.rand(d, n, generator=g) * 5
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    ref = selective_scan(*(t.double() for t in (u, delta, A, B, C, D, z, bias)), True,
                         backend="reference")
    y = selective_scan_export(u, delta, A, B, C, D, z, bias, True, method=method)
    assert y.shape == (b, d, l) and y.dtype == torch.float32
    # float32 over 40 steps (decays < 1): <= ~4 roundings per step, 160 * 2^-24 = 1e-5
    assert (y.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    # the dispatcher's "export" backend is the same function
    y2 = selective_scan(u, delta, A, B, C, D, z, bias, True, backend="export")
    assert torch.equal(y2, selective_scan_export(u, delta, A, B, C, D, z, bias, True))


def test_unknown_export_scan_method_is_an_error():
    x = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="unknown export scan method 'fast'.*unrolled"):
        selective_scan_export(x, x, -torch.ones(2, 1), torch.zeros(1, 1, 3),
                              torch.zeros(1, 1, 3), method="fast")


# ------------------------------------------------------------------------------------------
# a tiny MTAD
# ------------------------------------------------------------------------------------------
def test_tiny_export_is_standard_onnx_with_metadata(tiny_run, tiny_onnx):
    import onnx

    assert sorted(p.name for p in tiny_onnx.iterdir()) == ["metadata.json", "model.onnx"]
    graph = onnx.load(str(tiny_onnx / "model.onnx"))
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}      # no custom operator
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["anomaly_map", "pred_score"]
    meta = json.loads((tiny_onnx / "metadata.json").read_text())
    assert meta["input"]["image_size"] == SIZE and meta["input"]["batch"] == "dynamic"
    assert meta["input"]["channel_order"] == "RGB" and meta["input"]["value_range"] == [0.0, 1.0]
    assert meta["input"]["normalisation"]["inside_graph"] is True
    assert meta["thresholds"] == THRESHOLDS and meta["class_names"] == ["alpha", "beta"]
    import hashlib
    assert meta["source"]["sha256"] == hashlib.sha256((tiny_run / "last.pt").read_bytes()).hexdigest()
    parity = meta["parity"]
    assert parity["passed"] and parity["batch_sizes"] == [1, 3]
    assert parity["map_diff_of_range"] <= 1e-4 and parity["max_score_rel_diff"] <= 1e-4  # as above
    assert "synthetic" in parity["inputs"]      # this run's config names no data
    assert meta["precision"] == "fp32" and meta["mtad_version"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_tiny_export_matches_torch_at_batch_1_and_3(tiny_run, tiny_onnx, runtime):
    exported = ExportedModel(tiny_onnx, runtime=runtime)
    assert exported.runtime == runtime and exported.image_size == SIZE and exported.batch is None
    assert exported.class_names == ["alpha", "beta"] and exported.thresholds == Thresholds.from_legacy(THRESHOLDS)
    torch_model = TorchModel(tiny_run, "cpu")
    assert_close_to_torch(exported, torch_model, images(1, seed=1))
    assert_close_to_torch(exported, torch_model, images(3, seed=2))


def test_open_model_reads_an_export_and_classify_uses_class_thresholds(tiny_onnx):
    model = open_model(tiny_onnx)
    assert isinstance(model, ExportedModel) and model.info["kind"] == "export"
    out = model.classify(images(2), class_name="alpha")
    assert out["thresholds"]["image_threshold"] == 0.45
    assert out["thresholds"]["image_threshold_source"].startswith("class alpha")
    np.testing.assert_array_equal(out["pred_label"], out["pred_score"] >= 0.45)
    np.testing.assert_array_equal(out["verdict"], np.where(out["pred_score"] >= 0.45, "NG", "OK"))
    assert out["pred_mask"].shape == (2, 1, SIZE, SIZE)
    np.testing.assert_array_equal(out["pred_mask"].any(axis=(1, 2, 3)), out["pred_label"])
    assert model.classify(images(1))["thresholds"]["image_threshold"] == 0.5   # pooled
    from mtad.postprocess import ThresholdError
    with pytest.raises(ThresholdError, match="unknown class 'gamma'; known classes: alpha, beta"):
        model.classify(images(1), class_name="gamma")


def test_fixed_batch_export_from_the_cli_and_wrong_image_size(tiny_run, tmp_path, capsys):
    from mtad.cli import main

    out = tmp_path / "fixed"
    assert main(["export", str(tiny_run / "last.pt"), "--format", "onnx", "--batch", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity ok" in printed and "exported" in printed
    model = ExportedModel(out)
    assert model.batch == 2 and json.loads((out / "metadata.json").read_text())["parity"][
        "batch_sizes"] == [2, 2]
    # any number of images goes through a fixed-batch export
    assert_close_to_torch(model, TorchModel(tiny_run, "cpu"), images(3, seed=3))
    with pytest.raises(DeployError, match=r"expected images of shape B x 3 x 64 x 64 .*got "
                                          r"\(2, 3, 48, 48\)"):
        model.predict(np.zeros((2, 3, 48, 48), np.float32))
    with pytest.raises(DeployError, match=r"got \(64, 64, 3\)"):
        model.predict(np.zeros((64, 64, 3), np.float32))


def test_failed_parity_leaves_no_export_folder(tiny_run, tiny_onnx, tmp_path, monkeypatch):
    import shutil

    from mtad.deploy import export as export_module

    def copy_graph(net, size, batch, path, fused=False):   # skip the trace: reuse the tiny graph
        shutil.copy(tiny_onnx / "model.onnx", path)
        return "torchscript"

    monkeypatch.setattr(export_module, "_torch_export_onnx", copy_graph)
    monkeypatch.setattr(export_module, "MAP_TOLERANCE", 0.0)
    out = tmp_path / "exp"
    with pytest.raises(DeployError, match="failed its parity check, nothing written.*map range"):
        export_model(tiny_run, "onnx", out=out, log=quiet)
    assert list(tmp_path.iterdir()) == []       # neither the folder nor a partial one


def test_export_refuses_a_folder_that_is_not_an_export(tiny_run, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an mtad export"):
        export_model(tiny_run, "onnx", out=tmp_path, log=quiet)
    with pytest.raises(DeployError, match="unknown export format 'tflite'"):
        export_model(tiny_run, "tflite", log=quiet)
    with pytest.raises(DeployError, match="--batch must be a positive integer or 'dynamic'"):
        export_model(tiny_run, "onnx", batch="0", log=quiet)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last.pt: cannot read it as an mtad checkpoint: not a file saved by torch$"):
        export_model(bad, "onnx", log=quiet)
    from mtad.cli import main
    assert main(["export", str(bad), "--format", "onnx"]) == 2


def test_a_checkpoint_of_another_shape(tmp_path, capsys):
    save_untrained_run(tmp_path / "other", overrides=["model.depths=[1,1,1,2]"])
    record = read_run(tmp_path / "other")
    record.config = load_config(None, TINY).to_dict()         # says [1,1,1,1]: weights do not fit
    save_run(record, tmp_path / "other" / "last.pt")
    with pytest.raises(CheckpointError, match="weights do not fit the saved architecture"):
        export_model(tmp_path / "other", "onnx", log=quiet)
    from mtad.cli import main
    assert main(["export", str(tmp_path / "other"), "--format", "openvino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights do not fit" in err[0]


def test_an_export_folder_without_metadata(tiny_onnx, tmp_path):
    import shutil

    shutil.copy(tiny_onnx / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(DeployError, match="holds no metadata.json"):
        ExportedModel(tmp_path)
    with pytest.raises(DeployError, match="holds no metadata.json"):
        open_model(tmp_path)
    (tmp_path / "metadata.json").write_text("{}")
    with pytest.raises(DeployError, match="metadata.json: not a valid mtad export metadata file"):
        ExportedModel(tmp_path)
    with pytest.raises(DeployError, match="no such export folder"):
        ExportedModel(tmp_path / "missing")
    shutil.copy(tiny_onnx / "metadata.json", tmp_path / "metadata.json")
    with pytest.raises(DeployError, match="unknown runtime 'tensorrt'"):
        ExportedModel(tmp_path, runtime="tensorrt")
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(DeployError, match="holds no model file"):
        ExportedModel(tmp_path)


# ------------------------------------------------------------------------------------------
# a briefly trained run, both formats; metrics from the exported maps
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_trained_run_exports_with_parity_on_its_test_images(trained, fmt):
    trained_run = trained
    meta = export_model(trained_run, fmt, log=quiet)
    out = Path(meta["path"])
    assert out == trained_run / f"export-{fmt}"
    if fmt == "openvino":
        assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.bin", "model.xml"]
        assert 'element_type="f16"' not in (out / "model.xml").read_text()   # fp32 weights
    assert meta["parity"]["passed"] and "test images of" in meta["parity"]["inputs"]
    assert meta["results"] == json.loads((trained_run / "results.json").read_text())
    assert meta["history"] and meta["thresholds"]["classes"].keys() == {"alpha", "beta"}
    exported = ExportedModel(out)
    assert exported.runtime == ("openvino" if fmt == "openvino" else "onnxruntime")
    torch_model = TorchModel(trained_run, "cpu")
    assert_close_to_torch(exported, torch_model, images(1, seed=4))
    assert_close_to_torch(exported, torch_model, images(3, seed=5))


def test_onnxruntime_metrics_equal_torch_metrics(trained):
    trained_run = trained
    from mtad.data.dataset import open_split
    from mtad.metrics import compute_metrics

    out = trained_run / "export-onnx"
    if not out.is_dir():
        export_model(trained_run, "onnx", log=quiet)
    exported, torch_model = ExportedModel(out), TorchModel(trained_run, "cpu")
    run = load_run(trained_run)
    ds = open_split(run.config.data, "test")
    x = exported.read_images([r.image_path for r in ds.records])
    maps_e, scores_e = exported.predict(x)
    maps_t, scores_t = torch_model.predict(x)
    masks = np.stack([ds[i]["gt_mask"].numpy()[0] for i in range(len(ds))])
    labels = np.asarray(ds.labels)
    classes = np.asarray(ds.item_classes)
    for name in ds.classes:
        sel = classes == name
        m_e = compute_metrics(labels[sel], scores_e[sel], masks[sel], maps_e[sel, 0])
        m_t = compute_metrics(labels[sel], scores_t[sel], masks[sel], maps_t[sel, 0])
        for key, value in m_t.items():
            if isinstance(value, float):
                # scores within 1e-4 (above) can swap near-tied pixels' ranks: 1e-3 of a metric
                assert abs(m_e[key] - value) <= 1e-3, (name, key, m_e[key], value)
    thr = exported.thresholds.pooled.image
    near = np.abs(scores_t - thr) <= 1e-4     # within the parity bar of the threshold: either side

    np.testing.assert_array_equal((scores_e >= thr)[~near], (scores_t >= thr)[~near])


# ------------------------------------------------------------------------------------------
# without torch
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_inference_without_torch_or_timm(tiny_onnx, tiny_run, tmp_path):
    rgb = np.random.default_rng(6).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "part.png")     # not 64 px: read_images resizes
    code = f"""
import sys
sys.modules['torch'] = None
sys.modules['timm'] = None
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit('torch was importable')
import numpy as np
from mtad.deploy import open_model
from mtad.deploy.inferencer import ExportedModel
for runtime in ('onnxruntime', 'openvino'):
    model = ExportedModel({str(tiny_onnx)!r}, runtime=runtime)
    x = model.read_images([{str(tmp_path / 'part.png')!r}])
    anomaly_map, pred_score = model.predict(x)
    assert anomaly_map.shape == (1, 1, {SIZE}, {SIZE}), anomaly_map.shape
    print(runtime, float(pred_score[0]))
out = open_model({str(tiny_onnx)!r}).classify(x, class_name='beta')
print('label', bool(out['pred_label'][0]), out['thresholds']['image_threshold'])
assert not any(m in sys.modules and sys.modules[m] is not None for m in ('torch', 'timm'))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    x = ExportedModel(tiny_onnx).read_images([tmp_path / "part.png"])
    assert x.shape == (1, 3, SIZE, SIZE) and 0 <= x.min() and x.max() <= 1
    _, score = TorchModel(tiny_run, "cpu").predict(x)
    for runtime in ("onnxruntime", "openvino"):
        # the exporter's parity bar, as in assert_close_to_torch
        assert abs(float(lines[runtime]) - float(score[0])) <= 1e-4 * abs(float(score[0]))
    assert lines["label"].endswith(" 0.55")


@pytest.mark.slow
def test_predict_cli_with_an_export_runs_without_torch(tiny_onnx, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(
        photos / "part.png")
    (photos / "notes.txt").write_text("not an image")
    code = f"""
import sys
sys.modules['torch'] = None
sys.modules['timm'] = None
from mtad.cli import main
code = main(['predict', '--model', {str(tiny_onnx)!r}, {str(photos)!r}, '--out', {str(tmp_path / 'out')!r}])
bad = main(['predict', '--model', {str(tiny_onnx)!r}, {str(photos)!r}, '--out', {str(tmp_path / 'o2')!r},
            '--class', 'gamma'])
assert not any(sys.modules.get(m) is not None for m in ('torch', 'timm'))
sys.exit(code * 10 + bad)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]          # 0 for predict, 2 for the bad class
    assert "mtad predict: error: unknown class 'gamma'; known classes: alpha, beta" in proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert [Path(r["image_path"]).name for r in rows] == ["part.png"]
    assert (tmp_path / "out" / "photos__part_overlay.png").is_file()


def test_predict_with_the_export_gives_the_checkpoints_files_and_verdicts(trained, data_root,
                                                                          tmp_path):
    from mtad.engine.predict import predict

    out = trained / "export-onnx"
    if not out.is_dir():
        export_model(trained, "onnx", log=quiet)
    inputs = [data_root / "alpha" / "test", data_root / "beta" / "test"]
    torch_dir, export_dir = tmp_path / "torch", tmp_path / "export"
    predict(open_model(trained, "cpu"), inputs, torch_dir, log=quiet)
    predict(open_model(out), inputs, export_dir, log=quiet)
    assert sorted(p.name for p in torch_dir.iterdir()) == sorted(p.name for p in export_dir.iterdir())
    by_torch = list(csv.DictReader(open(torch_dir / "scores.csv")))
    by_export = list(csv.DictReader(open(export_dir / "scores.csv")))
    assert len(by_torch) == len(by_export) == 12
    threshold = float(by_torch[0]["image_threshold"])
    near = 0
    for a, b in zip(by_torch, by_export):
        assert a["image_path"] == b["image_path"]
        # the exporter's parity bar, as in assert_close_to_torch
        assert float(a["pred_score"]) == pytest.approx(float(b["pred_score"]), rel=1e-4)
        # The F1-optimal threshold is one of the test scores: that image may fall on
        # either side by rounding; every other verdict must agree.
        if abs(float(a["pred_score"]) - threshold) <= 1e-4 * abs(threshold):
            near += 1
        else:
            assert a["pred_label"] == b["pred_label"], a["image_path"]
    assert near <= 2


def test_predict_takes_images_by_dtype_the_same_for_checkpoint_and_export(tiny_run, tiny_onnx):
    """The input contract (mtad.deploy.as_model_input), on both Inferencers: uint8 and
    uint16 are scaled by their dtype's maximum, floats must be in [0, 1]; nothing is
    guessed from the values (anomalib #2448, insightface #2508: 0..255 silently taken)."""
    rng = np.random.default_rng(11)
    u8 = rng.integers(0, 256, (2, 3, SIZE, SIZE), dtype=np.uint8)
    unit = u8.astype(np.float32) / 255
    for model in (TorchModel(tiny_run, "cpu"), ExportedModel(tiny_onnx)):
        _, ref = model.predict(unit)
        # the same pixels as 8 and 16 bits: the same scores, up to float32 rounding
        np.testing.assert_allclose(model.predict(u8)[1], ref, rtol=1e-6)
        np.testing.assert_allclose(model.predict(u8.astype(np.uint16) * 257)[1], ref, rtol=1e-6)
        # rounding just outside [0, 1] is clipped, and the caller's array is left alone
        nudged = unit.copy()
        nudged[0, 0, 0, 0], nudged[1, 0, 0, 0] = 1 + 5e-4, -5e-4
        before = nudged.copy()
        model.predict(nudged)
        np.testing.assert_array_equal(nudged, before)
        with pytest.raises(DeployError, match=r"RGB in \[0, 1\]; got values in \[0, 255\] "
                                              r"\(0\.\.255 pixels: pass them as uint8"):
            model.predict(u8.astype(np.float32))
        with pytest.raises(DeployError, match=r"in \[0, 1\].*ImageNet-normalised"):
            model.predict((unit - 0.45) / 0.225)
        with pytest.raises(DeployError, match=r"got values in \[nan, nan\]"):
            model.predict(np.where(unit > 0.5, np.nan, unit).astype(np.float32))
        for dtype in (np.int64, np.int16, bool):
            with pytest.raises(DeployError, match=rf"dtype {np.dtype(dtype)} are not taken: "
                                                  r"pass uint8 \(0\.\.255\), uint16"):
                model.predict(u8.astype(dtype))
        with pytest.raises(DeployError, match=r"B x 3 x 64 x 64 .*got \(2, 64, 64, 3\)"):
            model.predict(u8.transpose(0, 2, 3, 1))      # channels last


def test_openvino_errors_keep_the_failed_check_on_one_line():
    from mtad.deploy.inferencer import _openvino_reason

    exc = RuntimeError("Exception from src/inference/src/cpp/core.cpp:132:\n"
                       "Exception from src/inference/src/dev/plugin.cpp:59:\n"
                       "Check 'getAxis() == 0' failed at fake_quantize.cpp:1499:\n"
                       "FakeQuantize node with name 'FQ_1' doesn't support axis: 2\n\n")
    reason = _openvino_reason(exc)
    assert "\n" not in reason and "Exception from" not in reason
    assert reason == ("Check 'getAxis() == 0' failed at fake_quantize.cpp:1499:; "
                      "FakeQuantize node with name 'FQ_1' doesn't support axis: 2")
    assert _openvino_reason(RuntimeError("Exception from core.cpp:1:")) == "Exception from core.cpp:1:"
