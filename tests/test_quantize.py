"""INT8 (both runtimes) and fp16 (OpenVINO) exports: NNCF post-training quantization of
the weighted MatMul/Gemm/Conv only, and the accuracy check that gates them.

The session's briefly trained tiny run (conftest.py: 64 px, 2 classes, 12 training and
12 test images) keeps each export to seconds; its AUROCs are not meaningful, but the
check's fp32 figures must be the run's own evaluation, and a forced failure must leave
nothing behind."""
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mtad.cli import main
from mtad.deploy import DeployError, open_model
from mtad.deploy.export import export_model
from mtad.deploy.inferencer import ExportedModel
from mtad.deploy import quantize as qz
from mtad.deploy.quantize import QUANTIZED_OPS

pytest.importorskip("nncf", reason="NNCF (the export extra) is not installed")


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def trained(trained_run, tmp_path_factory):
    """A copy of the session's trained run: exports land in its folder."""
    return Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("q") / "run"))


@pytest.fixture(scope="module")
def int8(trained):
    """Both INT8 exports of the trained run, made once."""
    # a budget any model meets: this tiny 2-epoch model's AUROCs over 6 images a class
    # move by tenths when quantized; test_a_failed_accuracy_check... tests the gate
    # the accuracy-aware search is on by default for both (NNCF's loop for openvino, the
    # layer-group search for onnx): with this budget it validates and reverts nothing
    return {fmt: export_model(trained, fmt, precision="int8", max_drop=1.0, max_class_drop=1.0,
                              log=quiet)
            for fmt in ("onnx", "openvino")}


@pytest.fixture
def reuse_int8_ir(int8, monkeypatch):
    """NNCF's OpenVINO quantization of the tiny run takes ~45 s on 2 cores (its pattern
    matching over the unrolled scan): a test of what happens after it (the check without
    test data) takes the IR the int8 fixture made from the same weights and records the
    calibration images quantization was given."""
    import mtad.deploy.quantize as q

    given = []
    made = Path(int8["openvino"]["path"])

    def quantize_openvino(onnx_path, images, folder, control=None):
        given.append(images)
        for name in ("model.xml", "model.bin"):
            shutil.copy(made / name, folder / name)
        return {k: int8["openvino"]["quantization"][k]
                for k in ("tool", "quantized_nodes", "fp32_nodes_kept", "accuracy_aware")}

    monkeypatch.setattr(q, "quantize_openvino", quantize_openvino)
    return given


def no_partial_left(folder: Path) -> bool:
    return not any(".partial-" in p.name for p in folder.iterdir())


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_export_records_quantization_and_accuracy_beside_fp32(trained, int8, fmt):
    meta = int8[fmt]
    out = Path(meta["path"])
    assert out == trained / f"export-{fmt}-int8" and not (trained / f"export-{fmt}").exists()
    on_disk = json.loads((out / "metadata.json").read_text())
    assert on_disk["precision"] == "int8" and "parity" not in on_disk
    q = on_disk["quantization"]
    assert q["operators"] == list(QUANTIZED_OPS) and q["tool_versions"]["nncf"]
    # statistics from the training split, every class (6 + 6 images: fewer than 300)
    assert q["images"]["count"] == 12 and q["images"]["classes"] == {"alpha": 6, "beta": 6}
    # the accuracy-aware search validated INT8 (NNCF's loop for openvino fp32 as well),
    # found the budget met (1.0 here) and returned no layer to fp32: every layer of the
    # scope is INT8 in the file
    search = q["accuracy_aware"]
    assert search["validations"] == (1 if fmt == "onnx" else 2)
    assert search["reverted_to_fp32"] == [] and search["max_reverted"] == 8
    assert search["int8_layers"] == q["quantized_nodes"] > 0
    check = on_disk["accuracy_check"]
    assert check["test_split"] and check["passed"] and set(check["classes"]) == {"alpha", "beta"}
    # the fp32 column is the run's own evaluation of the same test split (results.json):
    # the same maps through the same exact metrics, so equal up to float32 rounding
    run_results = json.loads((trained / "results.json").read_text())
    for cls, row in check["classes"].items():
        for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
            assert row["fp32"][key] == pytest.approx(run_results["classes"][cls][key], abs=1e-6)
            assert row["drop"][key] == pytest.approx(row["fp32"][key] - row["int8"][key])
        assert row["images"] == 6 and 0 <= row["verdicts_flipped"] <= 6
    assert 0 <= check["verdicts_flipped_share"] <= 1
    # thresholds re-calibrated on the test split for the int8 model, the run's kept beside them
    assert on_disk["thresholds"]["recalibrated"] is True
    assert "re-calibrated for the int8 export" in on_disk["thresholds"]["source"]
    assert on_disk["fp32_thresholds"]["source"] == "test split"
    model = ExportedModel(out)
    assert model.precision == "int8" and model.runtime == ("openvino" if fmt == "openvino"
                                                           else "onnxruntime")


def test_only_weighted_matmul_gemm_conv_are_quantized(int8):
    """Dequantized tensors feed only MatMul/Gemm/Conv (and Shape, which reads no values),
    each with a dequantized weight; the MatMuls of two computed tensors (the scan's
    read-out C_t . h_t, attention) and the scan's Mul/Add/Exp take fp32 tensors."""
    model = onnx.load(str(Path(int8["onnx"]["path"]) / "model.onnx"))
    constants = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    constants |= {o for o, n in producer.items() if n.op_type == "Constant"}

    def dequantized(name):
        n = producer.get(name)
        return n is not None and n.op_type == "DequantizeLinear"

    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    fed = [c for n in model.graph.node if n.op_type == "DequantizeLinear"
           for c in consumers.get(n.output[0], [])]
    assert fed and {c.op_type for c in fed} <= set(QUANTIZED_OPS) | {"Shape"}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS and any(dequantized(i) for i in node.input):
            w = producer[node.input[1]]     # the weight: int8 initializer -> DequantizeLinear
            assert dequantized(node.input[1]) and w.input[0] in constants, node.name
            assert node.name.startswith("/model/"), node.name   # not the map's smoothing
    two_computed = [n for n in model.graph.node if n.op_type == "MatMul"
                    and not any(dequantized(i) or i in constants for i in n.input)]
    smoothing = [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/Conv")]
    conv1d = [n for n in model.graph.node if n.op_type == "Conv" and "/mamba/conv1d/" in n.name]
    assert two_computed and smoothing and conv1d
    assert not any(dequantized(i) for n in conv1d for i in n.input)    # FP32_LAYERS
    assert len(two_computed) + len(smoothing) + len(conv1d) == \
        int8["onnx"]["quantization"]["fp32_nodes_kept"]


def test_openvino_int8_keeps_mambas_conv1d_fp32(int8):
    """In the OpenVINO IR no FakeQuantize feeds Mamba's conv1d (FP32_LAYERS; its bias makes
    OpenVINO rename the convolution "<name>/WithoutBiases", which the ignored scope must
    follow), while the other weighted layers of the Mamba mixer are quantized."""
    from mtad.deploy.inferencer import import_openvino

    ov = import_openvino()
    model = ov.Core().read_model(str(Path(int8["openvino"]["path"]) / "model.xml"))
    fed = [t.get_node().get_friendly_name() for op in model.get_ops()
           if op.get_type_name() == "FakeQuantize" for t in op.output(0).get_target_inputs()]
    conv1d = [op.get_friendly_name() for op in model.get_ops() if "/mamba/conv1d/" in
              op.get_friendly_name() and op.get_type_name() == "GroupConvolution"]
    assert conv1d and not [n for n in fed if "/mamba/conv1d/" in n]
    assert [n for n in fed if "/mamba/in_proj/" in n] and [n for n in fed if "/mamba/x_proj/" in n]
    assert int8["openvino"]["quantization"]["fp32_layers"] == ["/mamba/conv1d/"]


def test_predict_and_serve_take_the_int8_export(int8, data_root, tmp_path):
    out = Path(int8["openvino"]["path"])
    assert main(["predict", "--model", str(out), str(data_root / "alpha" / "test"),
                 "--out", str(tmp_path / "found")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "found" / "scores.csv")))
    assert len(rows) == 6 and all("re-calibrated for the int8 export" in r["image_threshold_source"]
                                  for r in rows)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mtad.serve import create_app

    body = TestClient(create_app(open_model(Path(int8["onnx"]["path"])))).get("/api/model").json()
    assert body["export"]["precision"] == "int8"
    assert body["export"]["accuracy_check"]["classes"].keys() == {"alpha", "beta"}
    assert body["export"]["quantization"]["operators"] == list(QUANTIZED_OPS)


def test_info_shows_the_check(int8, capsys):
    assert main(["info", str(Path(int8["onnx"]["path"]))]) == 0
    printed = capsys.readouterr().out
    assert "precision int8" in printed and "accuracy check ok" in printed
    assert "the layer-group search: 0 of the INT8 scope's layers returned to fp32 in 0 of" in printed
    assert "alpha" in printed and "image_auroc" in printed


@pytest.mark.slow
def test_a_failed_check_after_the_accuracy_aware_loop_leaves_no_folder_and_says_by_how_much(
        trained, capsys):
    """A budget no model meets (--max-drop -1): NNCF's loop ranks the layers, returns one
    group to fp32 (--max-reverted 1) and stops; the check then refuses the export, says
    by how much and what the loop did, and leaves nothing. (The fused scan keeps each of
    NNCF's per-layer compilations short: the standard graph's unrolled scan is most of
    its ~10,000 nodes.)"""
    code = main(["export", str(trained), "--format", "openvino", "--fused-scan", "--precision",
                 "int8", "--max-drop", "-1", "--max-reverted", "1", "--out",
                 str(trained / "searched")])
    captured = capsys.readouterr()
    assert code == 2 and not (trained / "searched").exists() and no_partial_left(trained)
    assert "NNCF's accuracy-aware loop now ranks the quantized layers" in captured.out
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("mtad export: error: int8 export failed its accuracy check")
    assert "exceeds --max-drop -1 by" in line
    reverted = int(line.split("accuracy-aware loop: ")[1].split(" of the INT8 scope")[0])
    assert reverted >= 1 and "at most --max-reverted 1), 3 validations" in line


def test_layer_groups_split_by_module_path_up_to_the_group_size():
    names = ([f"/model/encoder/net/blocks.{b}/conv_{i}/Conv" for b in range(3) for i in range(4)]
             + ["/model/neck/fuse/Conv", "/model/neck/down1/Conv"]
             + [f"/model/decoder/levels.1/blocks.0/mamba/{p}/MatMul" for p in ("in", "out", "x")])
    assert qz.layer_groups(names, max_size=16) == {
        "/model/encoder": names[:12], "/model/neck": names[12:14],
        "/model/decoder": names[14:]}
    groups = qz.layer_groups(names, max_size=4)
    assert list(groups) == ["/model/encoder/net/blocks.0", "/model/encoder/net/blocks.1",
                            "/model/encoder/net/blocks.2", "/model/neck", "/model/decoder"]
    assert sorted(n for g in groups.values() for n in g) == sorted(names)


def test_the_onnx_search_reverts_whole_groups_and_all_of_them_is_fp32(trained, int8, tmp_path):
    """`revert_to_fp32` of every INT8 layer gives back the fp32 network (no Q/DQ left, the
    fp32 weights back, the outputs torch's within float32 rounding); the search, given a
    budget no model meets (-1), validates INT8, ranks every group, returns the best two to
    fp32 (--max-reverted 2) and validates after each."""
    import torch

    from mtad.deploy.export import _score_check_images
    from mtad.deploy.torch_model import Normalised
    from mtad.runfile import load_run

    qdq = onnx.load(str(Path(int8["onnx"]["path"]) / "model.onnx"))
    dq = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = [n.name for n in qdq.graph.node if n.op_type in QUANTIZED_OPS and dq & set(n.input)]
    assert len(quantized) == int8["onnx"]["quantization"]["quantized_nodes"]
    run = load_run(trained, "cpu")
    net = Normalised(run.model).eval()
    x = np.random.default_rng(0).random((2, 3, 64, 64), np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x))[0].numpy()
    exported = export_model(trained, "onnx", out=tmp_path / "fp32", log=quiet)
    fp32 = onnx.load(str(Path(exported["path"]) / "model.onnx"))
    back = qz.revert_to_fp32(qdq, quantized, fp32)
    assert not {n.op_type for n in back.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    maps = qz._ort_infer(back)(x)[0]
    assert np.abs(maps - ref).max() <= 1e-4 * (ref.max() - ref.min())
    assert np.abs(qz._ort_infer(qdq)(x)[0] - ref).max() > 1e-3 * (ref.max() - ref.min())

    calibration, info = qz.calibration_images(run)
    data = _score_check_images(run, net, "int8", calibration, info, (-1.0, 1.0), quiet)
    lines = []
    model, record = qz._group_search(qdq, fp32, quantized, (data, 2, lines.append))
    groups = qz.layer_groups(quantized)
    assert record["groups"] == len(groups) == len(record["ranking"]) > 2
    assert record["validations"] == 3 == len(record["excess_per_validation"])
    assert record["reverted_groups"] == list(record["ranking"])[:2]
    back = {n for g in record["reverted_groups"] for n in groups[g]}
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8_now = {n.name for n in model.graph.node if n.name in quantized and dq & set(n.input)}
    assert int8_now == set(quantized) - back
    assert any("ranking" in line and "layer groups" in line for line in lines)


def test_fp16_openvino_export(trained):
    meta = export_model(trained, "openvino", precision="fp16", max_drop=1.0, max_class_drop=1.0,
                        log=quiet)
    out = Path(meta["path"])
    assert out == trained / "export-openvino-fp16" and meta["accuracy_check"]["passed"]
    model = ExportedModel(out)
    assert model.precision == "fp16"
    maps, scores = model.predict(np.random.default_rng(0).random((2, 3, 64, 64), np.float32))
    assert maps.shape == (2, 1, 64, 64) and np.isfinite(scores).all()


def test_bad_requests_are_one_line_errors_leaving_nothing(trained, tmp_path, capsys, monkeypatch):
    before = sorted(p.name for p in trained.iterdir())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    cases = [(["--format", "onnx", "--precision", "fp16"], "fp16 is for --format openvino only"),
             (["--format", "openvino", "--precision", "int8", "--quantize-images", str(empty)],
              "the folder holds no image files"),
             (["--format", "onnx", "--quantize-images", str(empty)], "is for --precision int8"),
             (["--format", "openvino", "--precision", "fp16", "--max-reverted", "2"],
              "--max-reverted is for --precision int8"),
             (["--format", "onnx", "--precision", "int8", "--max-reverted", "-1"],
              "--max-reverted -1: must be 0")]
    for flags, message in cases:
        assert main(["export", str(trained), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("mtad export: error:")
    monkeypatch.setitem(sys.modules, "nncf", None)          # NNCF not installed
    assert main(["export", str(trained), "--format", "openvino", "--precision", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs NNCF, which is not installed" in err[0]
    assert sorted(p.name for p in trained.iterdir()) == before
    with pytest.raises(DeployError, match="unknown --precision 'int4'"):
        export_model(trained, "onnx", precision="int4", log=quiet)


def test_without_test_data_the_check_uses_synthetic_defects_and_keeps_fp32_thresholds(
        trained, data_root, tmp_path, reuse_int8_ir):
    """A run copied away from its data: statistics from --quantize-images, the check on
    those good images plus synthetic defects, the run's thresholds kept and marked."""
    from mtad.runfile import read_run, save_run

    record = read_run(trained)
    record.config["data"]["root"] = str(tmp_path / "gone")
    save_run(record, tmp_path / "copied" / "last.pt")
    good = tmp_path / "good"
    shutil.copytree(data_root / "alpha" / "train" / "good", good / "alpha")
    shutil.copytree(data_root / "beta" / "train" / "good", good / "beta")
    with pytest.warns(UserWarning, match="not re-calibrated"):
        meta = export_model(tmp_path / "copied", "openvino", precision="int8", max_drop=1.0,
                            max_class_drop=1.0, quantize_images=good, log=quiet)
    assert meta["quantization"]["images"] == {"source": str(good), "count": 12, "classes": None}
    assert len(reuse_int8_ir) == 1 and len(reuse_int8_ir[0]) == 12
    check = meta["accuracy_check"]
    assert not check["test_split"] and "synthetic defects" in check["on"]
    assert meta["thresholds"]["recalibrated"] is False
    assert meta["thresholds"]["image"] == record.thresholds["image"]
    assert "not re-calibrated" in meta["thresholds"]["source"]
