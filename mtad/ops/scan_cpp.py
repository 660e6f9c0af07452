"""The ``cpp`` selective-scan backend: a fused C++ CPU kernel built on first use.

The source, ``csrc/selective_scan_cpu.cpp``, ships in the package and is compiled by
``torch.utils.cpp_extension.load`` (gcc/g++ and ninja needed) into torch's extension cache,
``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, never into the source tree. The
first call in a fresh cache builds it (about 30-60 s on a 2-core machine); later processes
load the cached library in well under a second. The module name carries a hash of the
source, the compiler flags, torch's version and the CPU's instruction-set flags, so a changed
source or another CPU never reuses a stale library.

One pass over the sequence per (batch row, block of up to 128 channels) in forward and in
backward, channels innermost and vectorised (the build uses ``-O3 -march=native``), the
work items spread over ATen's intra-op threads (``torch.set_num_threads``). Forward keeps the
state before every chunk of ``CHUNK`` steps; backward replays one chunk from it (decays and
states in an L2-sized buffer) and runs the adjoint recurrence backwards through it. The
sums over channels (grads of B, C) and over the batch (A, D) are per-item partials added in a
fixed order: results do not depend on the number of threads.

The step size ``softplus(delta + delta_bias)`` is computed by the caller with torch's own
ops (the same ones the ``chunked`` backend uses) and differentiated by autograd.

Use through :func:`mtad.ops.selective_scan` (``backend="cpp"``); :func:`load` returns the
compiled module or None, :func:`error` says why it is None.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
CHUNK = 32
# set MTAD_SCAN_NO_BUILD=1 to never compile (the backend then reports itself unavailable)
NO_BUILD_ENV = "MTAD_SCAN_NO_BUILD"

_LOCK = threading.Lock()
_MODULE = None
_ERROR: str | None = None
_TRIED = False
BUILD_SECONDS: float | None = None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def module_name() -> str:
    """Extension name: a hash of source, flags, torch version, machine and CPU flags."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS).encode(), torch.__version__.encode(),
                 platform.machine().encode(), _cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return f"mtad_scan_cpu_{h.hexdigest()[:12]}"


def load():
    """The compiled module (building it on first use), or None when that is impossible."""
    global _MODULE, _ERROR, _TRIED, BUILD_SECONDS
    if _TRIED:
        return _MODULE
    with _LOCK:
        if _TRIED:
            return _MODULE
        if os.environ.get(NO_BUILD_ENV, "").strip() not in ("", "0"):
            _ERROR = f"building is disabled by {NO_BUILD_ENV}"
        elif platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
            _ERROR = f"unsupported machine {platform.machine()}"
        else:
            start = time.perf_counter()
            # its import warns "No CUDA runtime is found" on CPU-only machines: not our concern
            log = logging.getLogger("torch.utils.cpp_extension")
            level = log.level
            log.setLevel(logging.ERROR)
            try:
                from torch.utils.cpp_extension import load as build

                flags = list(CFLAGS)
                if platform.machine().lower() in ("aarch64", "arm64"):
                    flags[1] = "-mcpu=native"
                _MODULE = build(name=module_name(), sources=[str(SOURCE)], extra_cflags=flags,
                                extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as exc:  # no compiler, no ninja, failed build, bad headers, ...
                _MODULE = None
                msg = str(exc).strip().splitlines()
                _ERROR = f"{type(exc).__name__}: {msg[-1] if msg else ''}"[:500]
            finally:
                log.setLevel(level)
            BUILD_SECONDS = time.perf_counter() - start
        _TRIED = True
    return _MODULE


def error() -> str | None:
    """Why the backend is unavailable (after :func:`load` returned None), else None."""
    return _ERROR


def _bld(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, k, l) -> contiguous (b, l, k) in dtype (free for transposed views of (b, l, k))."""
    return x.transpose(1, 2).to(dtype).contiguous()


def scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cd, return_last_state=False):
    """The ``cpp`` backend on (b, d, l) inputs; returns y (b, d, l) like the other backends."""
    dt = _bld(delta, cd)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cd)
    if delta_softplus:
        dt = F.softplus(dt)
    empty = u.new_empty(0, dtype=cd)
    out, last = _CppScan.apply(_bld(u, cd), dt, A.to(cd).t().contiguous(), _bld(B, cd),
                               _bld(C, cd), D.to(cd) if D is not None else empty,
                               _bld(z, cd) if z is not None else empty)
    y = out.to(u.dtype).transpose(1, 2)
    return (y, last) if return_last_state else y


class _CppScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, At, B, C, D, z):
        mod = load()
        out, ck, last = mod.forward(u, dt, At, B, C, D, z, CHUNK)
        ctx.save_for_backward(u, dt, At, B, C, D, z, ck)
        ctx.mark_non_differentiable(last)
        return out, last.transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, _glast):
        u, dt, At, B, C, D, z, ck = ctx.saved_tensors
        gu, gdt, gAt, gB, gC, gD, gz = load().backward(gout.contiguous(), u, dt, At, B, C, D, z,
                                                       ck, CHUNK)
        return (gu, gdt, gAt, gB, gC, gD if D.numel() else None, gz if z.numel() else None)
