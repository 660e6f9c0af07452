"""Mamba-1 selective scan that runs anywhere, with mamba_ssm's kernel as an optional GPU backend.

Meaning and shapes follow mamba_ssm's ``selective_scan_fn``::

    u, delta : (b, d, l)          A : (d, n), real
    B, C     : (b, n, l)          input-dependent, shared by all channels
    D        : (d,)               z : (b, d, l)          delta_bias : (d,)

    dt  = delta + delta_bias[:, None];  dt = softplus(dt) if delta_softplus
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t        (per channel d, state n; h_{-1} = 0)
    y_t = sum_n C_t[n] h_t[d, n] + D * u_t;  y = y * silu(z) if z is given

The state is kept in float32 (float64 when any input is float64); the output has
the dtype of ``u``.

Backends
--------
``reference``
    A plain sequential loop through autograd. Slow (its backward is O(L^2) in
    autograd bookkeeping); only a float64-capable oracle for tests.
``chunked``
    The portable CPU path: a ``torch.autograd.Function`` with a hand-written backward.
    Two levels: the sequence is cut into chunks of ``chunk_size`` steps (see
    ``default_chunk_size``); per chunk, the decays ``exp(dt * A)``, the inputs
    ``dt * u * B`` and the outputs ``C . h + D u`` are whole-chunk tensor
    operations on cache-sized work buffers, the recurrence runs step by step
    inside the chunk (one fused multiply-add per step), and the state is
    carried from chunk to chunk. Decays are only ever multiplied (each lies in
    (0, 1] for A < 0); nothing is divided and no cumulative product is
    inverted, so underflowing decays and long memories are both safe (log-decays
    below -60, -600 in float64, are raised to it: exp() into subnormals is very
    slow on CPUs and a decay of 1e-26 is zero for all purposes). (The
    chunk-parallel form with exp of cumulative log-decay differences is not
    used: it needs O(chunk) exps per element instead of one.) Forward saves
    only the inputs (no copies) and the state at each chunk boundary; backward
    replays one chunk at a time from its boundary state and runs the adjoint
    recurrence ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}`` backwards through
    it, giving the gradients of u, delta, A, B, C, D, z and delta_bias. No
    (b, d, l, n) tensor is ever allocated: inputs are read chunk by chunk from
    the caller's tensors (any strides) and results are written chunk by chunk
    into the outputs.
``cpp``
    A fused C++ CPU kernel (``mtad/ops/scan_cpp.py``, source in ``mtad/ops/csrc``),
    compiled with torch's extension machinery on first use into torch's extension
    cache; the same arithmetic as ``chunked`` in one pass per (sequence, channel
    block), forward and backward, vectorised over channels and threaded over
    sequences. Several times faster than ``chunked`` (benchmarks/README.md).
    Unavailable when the build fails (no g++ or ninja, ...) or ``MTAD_SCAN_NO_BUILD=1``.
``cuda``
    mamba_ssm's fused kernel; only when ``mamba_ssm`` imports and the tensors
    are on a GPU.
``export``
    Forward only, in standard ONNX operators (`mtad.ops.scan_export`); used
    automatically while ``torch.onnx.export`` traces the model.

Selection: ``export`` while exporting to ONNX, else the ``backend`` argument, else
the environment variable ``MTAD_SCAN_BACKEND``, else on a CUDA device ``cuda``
when mamba_ssm is usable (else ``chunked``), and on CPU ``cpp`` when its kernel
builds or is cached, else ``chunked`` (the silent fallback;
``mtad.ops.scan_cpp.error()`` says why). ``chunked`` stays the reference the
tests check against the float64 loop.

Modules: this one is the dispatcher (``selective_scan``, mamba_ssm's
``selective_scan_fn``: shape checks, backend choice); ``scan_ref`` the reference
loop (mamba_ssm's ``selective_scan_ref``), ``scan_chunked`` the chunked backend,
``scan_cpp`` the compiled CPU kernel, ``scan_export`` the ONNX-exportable scan.
"""
from __future__ import annotations

import os

import torch

from mtad.ops.scan_chunked import default_chunk_size, release_workspace, selective_scan_chunked
from mtad.ops.scan_ref import _compute_dtype, selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference", "available_backends", "default_chunk_size",
           "release_workspace", "BACKENDS", "ENV_VAR"]

BACKENDS = ("chunked", "cpp", "reference", "cuda", "export")
ENV_VAR = "MTAD_SCAN_BACKEND"


_CUDA_FN = None
_CUDA_ERROR: str | None = None
_CUDA_PROBED = False


def _cuda_scan_fn():
    """mamba_ssm's selective_scan_fn, or None when it cannot be imported (any failure)."""
    global _CUDA_FN, _CUDA_ERROR, _CUDA_PROBED
    if not _CUDA_PROBED:
        _CUDA_PROBED = True
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except Exception as exc:  # ImportError, missing triton, CUDA/ABI errors, ...
            _CUDA_FN, _CUDA_ERROR = None, f"{type(exc).__name__}: {exc}"
        else:
            _CUDA_FN = selective_scan_fn
    return _CUDA_FN


def _cpp_module():
    """The compiled CPU kernel (built on first use), or None when it cannot be built/loaded."""
    from mtad.ops import scan_cpp

    return scan_cpp.load()


def _cpp_error() -> str:
    from mtad.ops import scan_cpp

    return scan_cpp.error() or "unknown error"


def available_backends() -> list[str]:
    """Backends usable here: ``cpp`` only when its kernel builds (or is cached), ``cuda`` only
    when mamba_ssm imports and a GPU is present."""
    names = ["chunked", "reference"]
    if _cpp_module() is not None:
        names.insert(0, "cpp")
    if torch.cuda.is_available() and _cuda_scan_fn() is not None:
        names.append("cuda")
    return names


def _resolve_backend(backend: str | None, on_cuda: bool) -> str:
    name = backend if backend is not None else os.environ.get(ENV_VAR, "").strip() or None
    if name is None:
        if on_cuda:
            return "cuda" if _cuda_scan_fn() is not None else "chunked"
        return "cpp" if _cpp_module() is not None else "chunked"
    key = name.strip().lower()
    if key not in BACKENDS:
        source = "backend argument" if backend is not None else f"environment variable {ENV_VAR}"
        raise ValueError(f"unknown selective-scan backend {name!r} (from the {source}); "
                         f"valid backends: {', '.join(BACKENDS)}")
    if key == "cpp":
        if on_cuda:
            raise RuntimeError("selective-scan backend 'cpp' runs on CPU tensors only; "
                               "use backend='chunked' or 'cuda' on a GPU")
        if _cpp_module() is None:
            raise RuntimeError("selective-scan backend 'cpp' was requested but its C++ kernel "
                               f"could not be built or loaded ({_cpp_error()}); install g++ and "
                               "ninja, or use backend='chunked'")
    if key == "cuda":
        if _cuda_scan_fn() is None:
            raise RuntimeError("selective-scan backend 'cuda' was requested but mamba_ssm is not "
                               f"usable ({_CUDA_ERROR}); install the 'cuda' extra on a GPU machine "
                               "or use backend='chunked'")
        if not on_cuda:
            raise RuntimeError("selective-scan backend 'cuda' needs tensors on a CUDA device; "
                               "use backend='chunked' on CPU")
    return key


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, channels, length), got shape {tuple(u.shape)}")
    b, d, l = u.shape
    if l < 1:
        raise ValueError("the sequence length (last axis of u) must be at least 1")
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (channels={d}, d_state), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, n, l):
            raise ValueError(f"{name} must be (batch={b}, d_state={n}, length={l}) "
                             f"(input-dependent, one group), got {tuple(t.shape)}")
    if D is not None and D.shape != (d,):
        raise ValueError(f"D must be ({d},), got {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (d,):
        raise ValueError(f"delta_bias must be ({d},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, backend=None, chunk_size=None):
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics (see the module docstring).

    The positional parameters are exactly mamba_ssm's ``selective_scan_fn(u, delta, A, B, C,
    D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False)``, so a call
    written for it runs unchanged; ``backend`` and ``chunk_size`` are keyword-only.

    Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, n, l); D, delta_bias (d,).
    Returns y (b, d, l) in ``u``'s dtype; with ``return_last_state``, ``(y, last_state)`` where
    last_state is the state after the final step, (b, d, n), in the compute dtype (float32, or
    float64 for float64 inputs), not differentiable (as in mamba_ssm) except on ``reference``.
    ``backend``: "chunked", "cpp", "reference", "cuda" or None (see the module docstring);
    ValueError for an unknown name, RuntimeError for one that is unusable here.
    ``chunk_size`` only affects the ``chunked`` backend (default ``default_chunk_size``).
    The ``chunked`` and ``cpp`` backends return y (and the input gradients) as
    ``.transpose(1, 2)`` views of contiguous (b, l, d) tensors; call ``.contiguous()`` where
    (b, d, l) memory order is needed. Inputs may have any strides; transposed views of
    (b, l, d) activations are the cheapest to read.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = "export" if torch.onnx.is_in_onnx_export() else _resolve_backend(backend, u.is_cuda)
    if name == "export":
        from mtad.ops.scan_export import selective_scan_export

        return selective_scan_export(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "cuda":
        fn = _cuda_scan_fn()
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                        return_last_state)
    if name == "cpp":
        from mtad.ops import scan_cpp

        cd = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        return scan_cpp.scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), cd,
                             return_last_state)
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state, chunk_size)
