"""The ``cpp`` selective-scan backend: a fused C++ CPU kernel built once per environment.

The source, ``csrc/selective_scan_cpu.cpp``, ships in the package and is compiled by
``torch.utils.cpp_extension.load`` (a C++ compiler, ``$CXX`` or ``c++``, and ninja needed)
into a folder of torch's extension cache, ``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``, never into the source tree. The folder's name,
:func:`module_name`, is a hash of everything the build depends on: the source's bytes, the
compiler flags (:func:`build_flags`), the compiler, torch's version and install path, the
interpreter's prefix (``sys.prefix``: each virtual environment gets its own folder), the
machine and the CPU's instruction-set flags. The source is copied into that folder and built
from there, so the build commands torch writes (``build.ninja``) are the same for every
checkout of one source in one environment: two clones, or a clone and an installed copy,
share one build; two environments never overwrite each other's build and so never rebuild
each other's (pytorch/pytorch#124454: a changed ``build.ninja`` means a rebuild). A changed
source or another CPU never reuses a stale library.

The first use in an environment builds it (about 1-4 min on a 2-core machine) and says so on
stderr, once before and once after, as a :class:`ScanBuildNote` warning (the CLI prints it as
one ``note: ...`` line); a cached library loads in well under a second without a word. No
compiler or no ninja: no build is tried and the backend is unavailable (the automatic choice
is then ``chunked``; :func:`error` says why); a failed build says so and falls back the same
way. ``MTAD_SCAN_NO_BUILD=1`` disables the backend.

``MTAD_SCAN_MARCH`` replaces ``native`` in ``-march=native`` (``-mcpu=native`` on Arm), e.g.
``MTAD_SCAN_MARCH=x86-64-v3`` builds for AVX2 + FMA (a machine without AVX-512); with
``ATEN_CPU_CAPABILITY=avx2`` for torch's own kernels, that reproduces an AVX2-only machine on
an AVX-512 one (README.md, "Tests, and the compiled CPU scan kernel"). It is part of the
folder's name.

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

import contextlib
import hashlib
import logging
import os
import platform
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mtad.machine import cpu_flags

SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
CHUNK = 32
# set MTAD_SCAN_NO_BUILD=1 to never compile (the backend then reports itself unavailable)
NO_BUILD_ENV = "MTAD_SCAN_NO_BUILD"
# the target CPU instead of "native", e.g. x86-64-v3 (AVX2 + FMA), x86-64-v4 (AVX-512)
MARCH_ENV = "MTAD_SCAN_MARCH"

_LOCK = threading.Lock()
_MODULE = None
_ERROR: str | None = None
_TRIED = False
BUILD_SECONDS: float | None = None


class ScanBuildNote(UserWarning):
    """The one-time build of the CPU scan kernel: started, finished (seconds) or failed."""

    label = "note"      # mtad's CLI prints it as "note: ..." (mtad.cli._format_warning)


def _note(message: str) -> None:
    warnings.warn(message, ScanBuildNote, stacklevel=2)


def _arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def build_flags() -> list[str]:
    """The compiler flags: ``CFLAGS``, ``-mcpu`` instead of ``-march`` on Arm, and the target
    CPU from ``$MTAD_SCAN_MARCH`` instead of ``native`` when that is set.

    Raises ValueError when ``$MTAD_SCAN_MARCH`` is not one word of letters, digits and
    ``._+-`` (it goes into the compiler's command line)."""
    target = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", target):
        raise ValueError(f"{MARCH_ENV}={target!r} is not a CPU name for -march "
                         f"(e.g. x86-64-v3); letters, digits and ._+- only")
    flags = list(CFLAGS)
    flags[1] = f"-mcpu={target}" if _arm() else f"-march={target}"
    return flags


def _compiler() -> str:
    return os.environ.get("CXX", "c++")   # what torch.utils.cpp_extension compiles with


def module_name() -> str:
    """Extension (and build folder) name, ``mtad_scan_cpu_<12 hex digits>``: a hash of the
    source's bytes, :func:`build_flags`, the compiler, torch's version and install path,
    ``sys.prefix``, the machine and the CPU's flags. Not of the source's path: the build
    uses a copy inside the folder (see the module docstring)."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(build_flags()).encode(), _compiler().encode(),
                 torch.__version__.encode(), os.path.dirname(os.path.abspath(torch.__file__)).encode(),
                 os.path.abspath(sys.prefix).encode(), platform.machine().encode(),
                 cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return f"mtad_scan_cpu_{h.hexdigest()[:12]}"


@contextlib.contextmanager
def _quiet_cpp_extension():
    # importing torch.utils.cpp_extension logs "No CUDA runtime is found" on CPU-only
    # machines: not our concern
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def build_dir(name: str | None = None) -> Path:
    """The folder the kernel is built and cached in: ``$TORCH_EXTENSIONS_DIR/<name>``, else
    ``<torch's default extension root>/<name>`` (``~/.cache/torch_extensions``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        with _quiet_cpp_extension():
            from torch.utils.cpp_extension import get_default_build_root

            root = get_default_build_root()
    return Path(root) / (name or module_name())


def _stage_source(folder: Path) -> Path:
    """The source copied into the build folder (written only when missing or different: a
    new modification time would make ninja rebuild)."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / SOURCE.name
    text = SOURCE.read_bytes()
    if not staged.is_file() or staged.read_bytes() != text:
        tmp = folder / f".{SOURCE.name}.{os.getpid()}.tmp"
        tmp.write_bytes(text)
        os.replace(tmp, staged)
    return staged


def _why_no_build() -> str | None:
    if os.environ.get(NO_BUILD_ENV, "").strip() not in ("", "0"):
        return f"building is disabled by {NO_BUILD_ENV}"
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return f"unsupported machine {platform.machine()}"
    if shutil.which(_compiler()) is None:
        return f"no C++ compiler: {_compiler()!r} is not on PATH (set CXX or install g++)"
    if shutil.which("ninja") is None:
        return "ninja is not on PATH (pip install ninja)"
    return None


def load():
    """The compiled module (building it on first use in this environment), or None when that
    is impossible (:func:`error` says why)."""
    global _MODULE, _ERROR, _TRIED, BUILD_SECONDS
    if _TRIED:
        return _MODULE
    with _LOCK:
        if _TRIED:
            return _MODULE
        _ERROR = _why_no_build()
        if _ERROR is None:
            try:
                name = module_name()
            except ValueError as exc:     # a bad MTAD_SCAN_MARCH
                _ERROR = str(exc)
                _note(f"the CPU scan kernel is not built: {exc}; the scan runs on the slower "
                      f"'chunked' backend")
        if _ERROR is None:
            start = time.perf_counter()
            folder = build_dir(name)
            fresh = not (folder / f"{name}.so").is_file()
            if fresh:
                _note(f"building the CPU scan kernel once for this environment (1-4 min on 2 "
                      f"cores; later runs load it from {folder})")
            try:
                with _quiet_cpp_extension():
                    from torch.utils.cpp_extension import load as build

                    _MODULE = build(name=name, sources=[str(_stage_source(folder))],
                                    extra_cflags=build_flags(), extra_ldflags=["-fopenmp"],
                                    build_directory=str(folder), verbose=False)
            except Exception as exc:  # failed build, bad headers, unwritable cache, ...
                _MODULE = None
                msg = str(exc).strip().splitlines()
                _ERROR = f"{type(exc).__name__}: {msg[-1] if msg else ''}"[:500]
            BUILD_SECONDS = time.perf_counter() - start
            if _MODULE is None:
                _note(f"the CPU scan kernel could not be built ({_ERROR}); the scan runs on "
                      f"the slower 'chunked' backend")
            elif fresh:
                _note(f"built the CPU scan kernel in {BUILD_SECONDS:.0f} s")
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
