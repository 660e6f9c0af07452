import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import mtad.ops.scan as ss
import mtad.ops.scan_cpp as scan_cpp
from mtad.ops import available_backends, selective_scan

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# Tolerances. In float64 (unit roundoff 2^-53 = 1.1e-16) the fast backends differ from the
# reference loop only by summation order, fused multiply-adds and exp()'s last bits, a few
# units per step, growing at most linearly over the <= 300 steps here (each decay is < 1): 1e-10
# (values) and 1e-9 (gradients, one more pass) leave a margin of > 1e3 on any CPU, and a wrong
# term (a missing decay, a shifted index) is off by 1e-3 or more. float32 bounds are at each
# float32 comparison.


def _cpp_param():
    # The compiled backend is tested wherever a C++ compiler exists: there a failed build fails
    # the tests (the kernel's own build error is shown) instead of skipping them.
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return pytest.param("cpp", marks=pytest.mark.skip(reason="no C++ compiler"))
    return "cpp"


# The fast backends, each checked against the float64 reference loop.
FAST = ["chunked", _cpp_param()]


def kwargs_for(backend, chunk_size):
    return {"chunk_size": chunk_size} if backend == "chunked" else {}


@pytest.fixture(scope="module", autouse=True)
def _cpp_builds_where_a_compiler_exists():
    if shutil.which(os.environ.get("CXX", "c++")) is not None:
        assert scan_cpp.load() is not None, f"the cpp scan kernel did not build: {scan_cpp.error()}"


def make_inputs(b=2, d=3, l=16, n=4, dtype=torch.float64, seed=0, delta_scale=(0.05, 0.6),
                a_range=(0.1, 2.0)):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    lo, hi = delta_scale
    delta = lo + (hi - lo) * torch.rand(b, d, l, generator=g, dtype=dtype)
    A = -(a_range[0] + (a_range[1] - a_range[0]) * torch.rand(d, n, generator=g, dtype=dtype))
    return {"u": rnd(b, d, l), "delta": delta, "A": A, "B": rnd(b, n, l), "C": rnd(b, n, l),
            "D": rnd(d), "z": rnd(b, d, l), "delta_bias": 0.3 * rnd(d)}


def run(inputs, backend, softplus, use=("D", "z", "delta_bias"), grad=True, **kw):
    """Scan with the chosen optional inputs; returns output and dict of input gradients."""
    xs = {k: (v.clone().requires_grad_(grad) if (k in NAMES[:5] or k in use) else None)
          for k, v in inputs.items()}
    y = selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], D=xs["D"], z=xs["z"],
                       delta_bias=xs["delta_bias"], delta_softplus=softplus, backend=backend, **kw)
    if not grad:
        return y, {}
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(123),
                     dtype=torch.float64).to(y.dtype)
    (y * gy).sum().backward()
    return y, {k: v.grad for k, v in xs.items() if v is not None}


OPTION_SETS = {
    "all": (("D", "z", "delta_bias"), True),
    "none": ((), False),
    "D+bias": (("D", "delta_bias"), False),
    "z+softplus": (("z",), True),
}


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("length", [1, 7, 64, 65, 256, 300])
def test_fast_backends_match_reference_values_and_every_gradient(length, options, backend):
    use, softplus = OPTION_SETS[options]
    inputs = make_inputs(l=length, seed=length)
    y_ref, g_ref = run(inputs, "reference", softplus, use)
    # chunk 16 (chunked) / 32 (cpp): 64 and 256 divide it, 1 and 7 are shorter, 65 and 300
    # leave a remainder
    y, g = run(inputs, backend, softplus, use, **kwargs_for(backend, 16))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)   # float64: see NAMES
    assert set(g) == set(g_ref) == {"u", "delta", "A", "B", "C", *use}
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], rtol=1e-9, atol=1e-9, msg=f"grad of {k}")


@pytest.mark.parametrize("chunk", [None, 1, 3, 16, 50, 1000])
def test_chunk_size_does_not_change_results(chunk):
    inputs = make_inputs(b=2, d=3, l=50, n=3, seed=7)
    y_ref, g_ref = run(inputs, "reference", True)
    y, g = run(inputs, "chunked", True, chunk_size=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for k in g_ref:
        torch.testing.assert_close(g[k], g_ref[k], rtol=1e-9, atol=1e-9, msg=f"grad of {k}")


@pytest.mark.parametrize("backend", FAST)
def test_many_channels_and_rows_split_into_blocks(backend):
    # d = 300 is cut into channel blocks (<= 128 each) whose B/C gradients are summed, and
    # b = 1 forces the split even for few channels; both checked against the oracle
    for b, d in ((2, 300), (1, 40)):
        inputs = make_inputs(b=b, d=d, l=40, n=3, seed=d)
        y_ref, g_ref = run(inputs, "reference", True)
        y, g = run(inputs, backend, True)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        for k in g_ref:
            torch.testing.assert_close(g[k], g_ref[k], rtol=1e-9, atol=1e-9, msg=f"grad of {k}")


@pytest.mark.parametrize("backend", FAST)
def test_strided_inputs_and_interleaved_calls(backend):
    # inputs as transposed views of (b, l, k) tensors (how the Mamba mixer holds them), and
    # two calls whose forwards run before either backward: cached work buffers must not leak
    x1 = make_inputs(b=2, d=5, l=37, n=3, seed=21)
    x2 = make_inputs(b=3, d=4, l=50, n=2, seed=22)
    views = {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 else v)
             for k, v in x1.items()}
    assert not views["u"].is_contiguous()
    y_ref1, g_ref1 = run(x1, "reference", True)
    y_ref2, g_ref2 = run(x2, "reference", False)
    xs1 = {k: v.clone().requires_grad_() for k, v in views.items()}
    xs2 = {k: v.clone().requires_grad_() for k, v in x2.items()}
    y1 = selective_scan(*(xs1[k] for k in NAMES[:5]), D=xs1["D"], z=xs1["z"],
                        delta_bias=xs1["delta_bias"], delta_softplus=True, backend=backend,
                        **kwargs_for(backend, 8))
    y2 = selective_scan(*(xs2[k] for k in NAMES[:5]), D=xs2["D"], z=xs2["z"],
                        delta_bias=xs2["delta_bias"], delta_softplus=False, backend=backend,
                        **kwargs_for(backend, 16))
    y1_before = y1.detach().clone()
    for y, xs in ((y1, xs1), (y2, xs2)):
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(123),
                         dtype=torch.float64)
        (y * gy).sum().backward()
    assert torch.equal(y1.detach(), y1_before)
    torch.testing.assert_close(y1, y_ref1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y2, y_ref2, rtol=1e-10, atol=1e-10)
    for xs, g_ref in ((xs1, g_ref1), (xs2, g_ref2)):
        for k in g_ref:
            torch.testing.assert_close(xs[k].grad, g_ref[k], rtol=1e-9, atol=1e-9, msg=k)
    ss.release_workspace()
    torch.testing.assert_close(run(x1, backend, True, grad=False)[0], y_ref1)


def test_default_chunk_size_follows_the_state_size():
    assert ss.default_chunk_size(128, 8, 64) == 16       # MTAD level 3 at batch 8
    assert ss.default_chunk_size(8, 8, 512) == 16        # level 0 at batch 8
    assert ss.default_chunk_size(16, 8, 64) == 64
    assert ss.default_chunk_size(1, 8, 512) == 128
    assert ss.default_chunk_size(2, 4, 3) == 256
    assert ss.default_chunk_size(4096, 16, 512) == 16


def test_reference_matches_an_independent_scalar_loop():
    inputs = make_inputs(b=1, d=2, l=5, n=3, seed=3)
    y = selective_scan(*(inputs[k] for k in "u delta A B C".split()), D=inputs["D"],
                       z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True,
                       backend="reference")
    u, delta, A, B, C = (inputs[k] for k in "u delta A B C".split())
    for dd in range(2):
        h = [0.0] * 3
        for t in range(5):
            x = float(delta[0, dd, t] + inputs["delta_bias"][dd])
            dt = math.log1p(math.exp(x))
            out = 0.0
            for k in range(3):
                h[k] = math.exp(dt * float(A[dd, k])) * h[k] \
                    + dt * float(u[0, dd, t]) * float(B[0, k, t])
                out += float(C[0, k, t]) * h[k]
            out += float(inputs["D"][dd]) * float(u[0, dd, t])
            zz = float(inputs["z"][0, dd, t])
            out *= zz / (1 + math.exp(-zz))
            # float64 against Python floats (also float64), 5 steps: a few units of 1e-16
            assert y[0, dd, t].item() == pytest.approx(out, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("softplus", [True, False])
def test_float64_gradcheck(softplus, backend):
    inputs = make_inputs(b=2, d=2, l=9, n=3, seed=11)
    xs = tuple(inputs[k].clone().requires_grad_() for k in NAMES)

    def f(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias,
                              delta_softplus=softplus, backend=backend,
                              **kwargs_for(backend, 4))

    # torch's float64 defaults: finite-difference rounding ~u/eps = 1e-10, truncation ~eps^2
    assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflowing_decays_stay_finite_and_correct(dtype, backend):
    # delta 50..100 with A = -8: exp(delta * A) underflows to 0 (e^-800), every step forgets
    inputs = make_inputs(b=2, d=3, l=40, n=4, dtype=dtype, seed=5, delta_scale=(50.0, 100.0),
                         a_range=(8.0, 8.0))
    y, g = run(inputs, backend, False, ("D", "z"))
    assert torch.isfinite(y).all()
    for k, v in g.items():
        assert torch.isfinite(v).all(), k
    y_ref, g_ref = run({k: v.double() for k, v in inputs.items()}, "reference", False, ("D", "z"))
    # with no memory the output is C_t . (dt_t u_t B_t) + D u_t, times silu(z)
    u, dl, B, C = (inputs[k].double() for k in ("u", "delta", "B", "C"))
    expect = (dl * u * (B * C).sum(1, keepdim=True) + inputs["D"].double()[:, None] * u) \
        * torch.nn.functional.silu(inputs["z"].double())
    # no memory: each output is a handful of roundings of terms up to ~1e3 (delta <= 100):
    # float32 (6e-8) gives ~1e-5 relative, 1e-4 absolute where terms cancel; float64 as above
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(y.double(), expect, **tol)
    torch.testing.assert_close(y.double(), y_ref, **tol)
    for k in g_ref:
        torch.testing.assert_close(g[k].double(), g_ref[k], **tol, msg=f"grad of {k}")


@pytest.mark.parametrize("backend", FAST)
def test_long_memory_tiny_delta_is_accurate(backend):
    # delta = 1e-6: decays exp(-8e-6) ~ 1, the state integrates over all 300 steps
    inputs = make_inputs(b=2, d=3, l=300, n=4, dtype=torch.float32, seed=9,
                         delta_scale=(1e-6, 1e-6), a_range=(8.0, 8.0))
    y, g = run(inputs, backend, False, ("D",))
    assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in g.values())
    y_ref, g_ref = run({k: v.double() for k, v in inputs.items()}, "reference", False, ("D",))
    # float32 state summed over 300 steps: rounding grows to ~300 units (2e-5 relative);
    # rtol 1e-4 and 1e-3 (gradients, a second 300-step pass) keep a margin of 5 on any CPU
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-6)
    for k in g_ref:
        scale = g_ref[k].abs().max().item()
        torch.testing.assert_close(g[k].double(), g_ref[k], rtol=1e-3, atol=1e-4 * scale,
                                   msg=f"grad of {k}")
    # the state really remembers: y minus the D-skip term is the cumulative sum of inputs
    u, dl, B, C = (inputs[k].double() for k in ("u", "delta", "B", "C"))
    h = torch.cumsum((dl * u)[:, :, None, :] * B[:, None], dim=-1)          # b, d, n, l
    no_decay = (h * C[:, None]).sum(2) + inputs["D"].double()[:, None] * u
    # the decays exp(-8e-6) are not 1: over 300 steps they shrink the state by up to 2.4e-3
    torch.testing.assert_close(y.double(), no_decay, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
def test_float32_close_to_float64_reference(backend):
    inputs = make_inputs(b=2, d=4, l=100, n=8, seed=2)
    y_ref, g_ref = run(inputs, "reference", True)
    y, g = run({k: v.float() for k, v in inputs.items()}, backend, True)
    assert y.dtype == torch.float32
    # 100 float32 steps of 8 states: ~100 units of 6e-8 relative to the values (~1), 1e-4 and
    # 1e-3 (gradients: a second pass) leave a margin of 10; a wrong term is off by >= 1e-2
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    for k in g_ref:
        assert g[k].dtype == torch.float32
        torch.testing.assert_close(g[k].double(), g_ref[k], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", ["chunked", _cpp_param(), "reference"])
def test_bf16_in_bf16_out(backend):
    inputs = make_inputs(b=2, d=3, l=20, n=4, seed=4)
    x16 = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    y, g = run(x16, backend, True)
    assert y.dtype == torch.bfloat16
    assert all(v.dtype == torch.bfloat16 for v in g.values())
    # computed in float32 from the bf16 values: only the final rounding differs
    y32, _ = run({k: v.float() for k, v in x16.items()}, backend, True, grad=False)
    # bfloat16 keeps 8 bits: its final rounding is 2^-9 = 2e-3 relative; 1e-2 is five of them
    torch.testing.assert_close(y.float(), y32, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", FAST)
def test_does_not_modify_inputs(backend):
    inputs = make_inputs(b=1, d=2, l=1, n=3)      # l = 1: time-major views could alias
    saved = {k: v.clone() for k, v in inputs.items()}
    run(inputs, backend, True)
    xs = {k: v for k, v in inputs.items()}
    selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"], xs["z"],
                   xs["delta_bias"], True, backend=backend)
    for k in inputs:
        assert torch.equal(inputs[k], saved[k]), k


def test_backend_argument_then_env_var_then_default(monkeypatch):
    calls = []
    real = ss.selective_scan_reference

    def spy(*a, **k):
        calls.append("reference")
        return real(*a, **k)

    monkeypatch.setattr(ss, "selective_scan_reference", spy)
    inputs = make_inputs(b=1, d=2, l=5, n=2)
    monkeypatch.delenv("MTAD_SCAN_BACKEND", raising=False)
    run(inputs, None, True, grad=False)
    assert calls == []                                  # default on CPU: chunked
    monkeypatch.setenv("MTAD_SCAN_BACKEND", "reference")
    run(inputs, None, True, grad=False)
    assert calls == ["reference"]                      # env var chooses
    run(inputs, "chunked", True, grad=False)
    assert calls == ["reference"]                      # argument beats env var
    monkeypatch.setenv("MTAD_SCAN_BACKEND", "Chunked ")
    run(inputs, None, True, grad=False)
    assert calls == ["reference"]


def test_unknown_backend_is_a_value_error_listing_valid_ones(monkeypatch):
    inputs = make_inputs(b=1, d=2, l=5, n=2)
    with pytest.raises(ValueError, match="chunked.*reference.*cuda"):
        run(inputs, "triton", True, grad=False)
    monkeypatch.setenv("MTAD_SCAN_BACKEND", "fast")
    with pytest.raises(ValueError, match="MTAD_SCAN_BACKEND"):
        run(inputs, None, True, grad=False)


def test_cuda_backend_unavailable_is_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(ss, "_cuda_scan_fn", lambda: None)
    monkeypatch.setattr(ss, "_CUDA_ERROR", "ImportError: No module named 'mamba_ssm'")
    monkeypatch.delenv("MTAD_SCAN_BACKEND", raising=False)
    assert "cuda" not in available_backends()
    assert set(available_backends()) - {"cpp"} == {"chunked", "reference"}
    assert ss._resolve_backend(None, on_cuda=True) == "chunked"
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        run(make_inputs(b=1, d=2, l=5, n=2), "cuda", True, grad=False)


def test_cuda_backend_selected_when_available(monkeypatch):
    fake = object()
    monkeypatch.setattr(ss, "_cuda_scan_fn", lambda: fake)
    monkeypatch.delenv("MTAD_SCAN_BACKEND", raising=False)
    assert ss._resolve_backend(None, on_cuda=True) == "cuda"
    monkeypatch.setattr(ss, "_cpp_module", lambda: None)
    assert ss._resolve_backend(None, on_cuda=False) == "chunked"
    with pytest.raises(RuntimeError, match="CUDA device"):
        ss._resolve_backend("cuda", on_cuda=False)


def test_shape_errors():
    x = make_inputs(b=1, d=2, l=5, n=3)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"][:, :2], x["C"])
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(x["u"], x["delta"], x["A"].t(), x["B"], x["C"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")
def test_imports_and_runs_without_mamba_ssm_and_triton():
    code = textwrap.dedent("""
        import sys
        sys.modules['mamba_ssm'] = None
        sys.modules['triton'] = None
        import torch
        import mtad
        from mtad.ops import available_backends
        u = torch.randn(2, 3, 20); delta = torch.rand(2, 3, 20)
        A = -torch.rand(3, 4); B = torch.randn(2, 4, 20); C = torch.randn(2, 4, 20)
        u.requires_grad_()
        y = mtad.selective_scan(u, delta, A, B, C, torch.ones(3), delta_softplus=True)
        y.sum().backward()
        assert y.shape == (2, 3, 20) and torch.isfinite(u.grad).all()
        assert 'cuda' not in available_backends(), available_backends()
        assert available_backends()[0] == 'cpp', available_backends()
        try:
            mtad.selective_scan(u, delta, A, B, C, backend='cuda')
        except RuntimeError as e:
            assert 'mamba_ssm' in str(e)
        else:
            raise AssertionError('cuda backend did not refuse')
        print('OK', available_backends())
    """)
    env = {k: v for k, v in os.environ.items() if k != "MTAD_SCAN_BACKEND"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "OK ['cpp', 'chunked', 'reference']" in res.stdout


def test_cpu_default_is_cpp_when_built_else_chunked(monkeypatch):
    monkeypatch.delenv("MTAD_SCAN_BACKEND", raising=False)
    calls = []
    real = scan_cpp.scan
    monkeypatch.setattr(scan_cpp, "scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = make_inputs(b=1, d=2, l=5, n=2)
    if scan_cpp.load() is not None:
        run(inputs, None, True, grad=False)
        assert calls == [1] and ss._resolve_backend(None, on_cuda=False) == "cpp"
        with pytest.raises(RuntimeError, match="CPU tensors only"):
            ss._resolve_backend("cpp", on_cuda=True)
    monkeypatch.setattr(ss, "_cpp_module", lambda: None)
    monkeypatch.setattr(ss, "_cpp_error", lambda: "CalledProcessError: g++ failed")
    assert ss._resolve_backend(None, on_cuda=False) == "chunked"
    assert "cpp" not in available_backends()
    with pytest.raises(RuntimeError, match="could not be built.*g\\+\\+ failed"):
        run(inputs, "cpp", True, grad=False)


@pytest.mark.slow
def test_failed_build_falls_back_to_chunked(tmp_path):
    # A fresh extension cache and a compiler that does not exist: the build fails, the
    # automatic choice is chunked and gives the reference's result, 'cpp' is a clear error.
    code = textwrap.dedent("""
        import torch
        import mtad.ops.scan_cpp as scan_cpp
        from mtad.ops import available_backends, selective_scan, selective_scan_reference
        g = torch.Generator().manual_seed(0)
        u = torch.randn(2, 3, 20, generator=g, dtype=torch.float64)
        delta = torch.rand(2, 3, 20, generator=g, dtype=torch.float64)
        A = -torch.rand(3, 4, generator=g, dtype=torch.float64)
        B = torch.randn(2, 4, 20, generator=g, dtype=torch.float64)
        C = torch.randn(2, 4, 20, generator=g, dtype=torch.float64)
        y = selective_scan(u, delta, A, B, C, delta_softplus=True)
        ref = selective_scan_reference(u, delta, A, B, C, delta_softplus=True)
        assert torch.allclose(y, ref, rtol=1e-10, atol=1e-10)   # float64, 20 steps
        assert available_backends() == ['chunked', 'reference'], available_backends()
        assert scan_cpp.error(), 'no reason recorded'
        try:
            selective_scan(u, delta, A, B, C, backend='cpp')
        except RuntimeError as e:
            assert 'could not be built' in str(e), e
        else:
            raise AssertionError('cpp did not refuse')
        print('FELL BACK', scan_cpp.error())
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("MTAD_SCAN_BACKEND", "MTAD_SCAN_NO_BUILD")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "ext")
    env["CXX"] = str(tmp_path / "no-such-compiler")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FELL BACK" in res.stdout
    assert not any(p.suffix == ".so" for p in (tmp_path / "ext").rglob("*"))


def test_signature_is_mamba_ssms_with_keyword_only_backend():
    import inspect

    params = list(inspect.signature(selective_scan).parameters.values())
    positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
                          "return_last_state"]
    assert {p.name for p in params if p.kind == p.KEYWORD_ONLY} == {"backend", "chunk_size"}
    x = make_inputs(b=2, d=3, l=11, n=4, seed=8)
    args = [x[k] for k in NAMES]
    # a call written for mamba_ssm: all ten positionally, the tenth is return_last_state
    y_ref, last_ref = selective_scan(*args, True, True, backend="reference")
    assert last_ref.shape == (2, 3, 4)
    for backend in ("chunked", "cpp") if scan_cpp.load() is not None else ("chunked",):
        y, last = selective_scan(*args, True, True, backend=backend)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
        assert torch.is_tensor(selective_scan(*args, True, False, backend=backend))
    with pytest.raises(TypeError):
        selective_scan(*args, True, False, "chunked")
