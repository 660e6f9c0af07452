"""The fused selective scan for OpenVINO (`mtad export --fused-scan`): the extension's op
against the float64 reference, and a tiny model's fused export against the standard one.

The extension is compiled on first use (about 5-10 s with g++; cached per environment in
$MTAD_OV_EXTENSIONS_DIR, here a session temp folder unless set); without a compiler or
OpenVINO's headers the tests that need it are skipped with the reason."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_untrained_run as make_checkpoint
from mtad.deploy import DeployError, fused_scan
from mtad.deploy.export import export_model
from mtad.deploy.inferencer import ExportedModel
from mtad.ops import selective_scan
from test_deploy import images, quiet


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    pytest.importorskip("openvino")
    if not os.environ.get(fused_scan.DIR_ENV):
        os.environ[fused_scan.DIR_ENV] = str(tmp_path_factory.mktemp("ov_ext"))
    try:
        return fused_scan.library()
    except DeployError as exc:
        if "compiler" in str(exc) or "headers" in str(exc):
            pytest.skip(f"the OpenVINO scan extension cannot be built here: {exc}")
        raise


def one_node_model(d, n, with_d, with_z, with_bias, softplus):
    """An ONNX graph of one mtad.SelectiveScan node (as --fused-scan writes it); compiled for OpenVINO's CPU plugin with the extension."""
    import onnx
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    feeds = [helper.make_tensor_value_info(k, f, s) for k, s in
             [("u", ["b", "l", d]), ("delta", ["b", "l", d]), ("A", [d, n]), ("B", ["b", "l", n]),
              ("C", ["b", "l", n])]]
    names = ["u", "delta", "A", "B", "C"]
    for key, present, shape in [("D", with_d, [d]), ("z", with_z, ["b", "l", d]),
                                ("delta_bias", with_bias, [d])]:
        if present:
            names.append(key)
            feeds.append(helper.make_tensor_value_info(key, f, shape))
    node = helper.make_node("SelectiveScan", names, ["y"], domain="mtad",
                            delta_softplus=int(softplus), has_D=int(with_d), has_z=int(with_z),
                            has_delta_bias=int(with_bias))
    graph = helper.make_graph([node], "scan", feeds,
                              [helper.make_tensor_value_info("y", f, ["b", "l", d])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("mtad", 1)])
    onnx.checker.check_model(model)
    core = fused_scan.core(fused=True)
    return core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.mark.parametrize("b,d,n,l,with_d,with_z,with_bias,softplus", [
    (2, 13, 8, 40, True, True, True, True),      # 13 channels: a vector loop's tail
    (3, 136, 4, 33, False, False, False, False),  # two channel blocks; no D, z, bias, softplus
    (1, 64, 16, 40, True, False, True, True),
])
def test_fused_op_matches_the_float64_reference(extension, b, d, n, l, with_d, with_z,
                                                with_bias, softplus):
    g = torch.Generator().manual_seed(d)
    u, delta, z = (torch.randn(b, l, d, generator=g) for _ in range(3))
    if not softplus:
        delta = delta.abs() * 0.5          # a step size is positive
    B, C = (torch.randn(b, l, n, generator=g) for _ in range(2))
    A = -torch.rand(d, n, generator=g) * 5
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.5
    compiled = one_node_model(d, n, with_d, with_z, with_bias, softplus)
    feed = {"u": u, "delta": delta, "A": A, "B": B, "C": C}
    feed.update({k: v for k, v, on in [("D", D, with_d), ("z", z, with_z),
                                        ("delta_bias", bias, with_bias)] if on})
    y = compiled({k: v.numpy() for k, v in feed.items()})[0]
    t = lambda x: x.double().transpose(1, 2)   # noqa: E731  (b, l, k) -> (b, k, l)
    ref = selective_scan(t(u), t(delta), A.double(), t(B), t(C),
                         D.double() if with_d else None, t(z) if with_z else None,
                         bias.double() if with_bias else None, softplus,
                         backend="reference").transpose(1, 2).numpy()
    assert y.shape == (b, l, d) and y.dtype == np.float32
    # float32 over at most 40 steps whose decays are < 1, so errors do not grow: a few
    # roundings per step (exp to ~1 ulp, one fused multiply-add, the read-out's n products)
    # on values of the output's scale, 40 * 4 * 2^-24 = 1e-5 of max |y| (the bound the
    # standard export's test uses; any x86-64 CPU, AVX2 or AVX-512)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_tiny_fused_export_matches_the_standard_export(extension, tmp_path):
    run = make_checkpoint(tmp_path / "run")
    std = export_model(run, "openvino", log=quiet)
    fused = export_model(run, "openvino", fused_scan=True, log=quiet)
    assert Path(fused["path"]).name == "export-openvino-fused"
    assert fused["graph"]["scan"] == fused_scan.FUSED and std["graph"]["scan"] == "unrolled"
    assert "SelectiveScan" in fused["graph"]["operators"]
    assert "SelectiveScan" not in std["graph"]["operators"]
    assert fused["graph"]["nodes"] < std["graph"]["nodes"] / 2   # ~2 nodes a step are gone
    assert fused["parity"]["passed"]
    x = images(3)
    m_s, s_s = ExportedModel(std["path"]).predict(x)
    m_f, s_f = ExportedModel(fused["path"]).predict(x)
    # the parity bar of every export (export.MAP_TOLERANCE, SCORE_TOLERANCE): two float32
    # scans of one network (the unrolled graph, the fused loop), hundreds of roundings apart
    assert np.abs(m_f - m_s).max() <= 1e-4 * (m_s.max() - m_s.min())
    assert (np.abs(s_f - s_s) / np.abs(s_s)).max() <= 1e-4
    # the line PC's path: the inferencer loads the extension without torch or timm
    code = ("import sys; sys.modules['torch'] = sys.modules['timm'] = None\n"
            "import numpy as np\nfrom mtad.deploy.inferencer import ExportedModel\n"
            f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
            f"print(repr(ExportedModel({fused['path']!r}).predict(x)[1].tolist()))")
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    # the same runtime and op in another process: equal up to a few float32 roundings
    assert np.allclose(np.array(eval(done.stdout), np.float32), s_f, rtol=1e-6, atol=0)


def test_fused_scan_is_refused_for_onnx_and_without_a_compiler(tmp_path, monkeypatch):
    run = make_checkpoint(tmp_path / "run")
    with pytest.raises(DeployError, match="--fused-scan is for --format openvino"):
        export_model(run, "onnx", fused_scan=True, log=quiet)
    pytest.importorskip("openvino")
    monkeypatch.setenv("CXX", "no-such-compiler-mtad")
    monkeypatch.setenv(fused_scan.DIR_ENV, str(tmp_path / "empty_cache"))
    with pytest.raises(DeployError, match="needs a C\\+\\+ compiler: 'no-such-compiler-mtad'"):
        export_model(run, "openvino", fused_scan=True, log=quiet)
    assert not (tmp_path / "run" / "export-openvino-fused").exists()
