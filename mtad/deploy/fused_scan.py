"""The fused selective scan for OpenVINO: an extension library built once per environment.

``mtad export RUN --format openvino --fused-scan`` writes each selective scan as one custom
node, ``mtad::SelectiveScan`` (`mtad.ops.scan_fused` emits it), instead of the default graph of
standard operators (`mtad.ops.scan_export`, about 2 nodes per step). OpenVINO runs that node
through this extension: ``csrc/ov_selective_scan.cpp`` in `mtad.ops` (a class derived from
``ov::op::Op`` whose ``evaluate`` is the scan's loop, plus the ONNX frontend's mapping of
domain ``mtad``), compiled here with the C++ compiler (``$CXX``, else ``g++``) against the
headers and libraries the ``openvino`` wheel ships. No torch: an inspection PC that runs an
export needs numpy, Pillow, openvino and a compiler once (or a copied cache folder).

The library lands in ``$MTAD_OV_EXTENSIONS_DIR`` (default ``~/.cache/mtad/openvino``, or
``$XDG_CACHE_HOME/mtad/openvino``), in a folder named by a hash of the source's bytes, the
flags, the compiler, openvino's version and install path, the machine and the CPU's
instruction-set flags (``-march=native``; ``$MTAD_SCAN_MARCH`` replaces ``native`` as for the
torch kernel), so another source, openvino or CPU never reuses a stale build. The first use
builds it (about 10 s on 2 cores) and says so in one ``note:`` line; later uses load the
cached file. Onnxruntime is not served: its wheel ships no C/C++ headers, so a custom-op
library cannot be built against it offline (benchmarks/README.md, "Export: the scan").

Use: :func:`library` returns the path (building if needed) and raises DeployError with the
reason (no compiler, no openvino headers, a failed build); :func:`add_to` adds it to an
``ov.Core``.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import threading
import time
import warnings
from pathlib import Path

from mtad.machine import cpu_flags

from mtad.deploy.errors import DeployError

SOURCE = Path(__file__).resolve().parents[1] / "ops" / "csrc" / "ov_selective_scan.cpp"
CFLAGS = ["-std=c++17", "-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno",
          "-fno-trapping-math", "-fPIC", "-shared"]
DIR_ENV = "MTAD_OV_EXTENSIONS_DIR"
MARCH_ENV = "MTAD_SCAN_MARCH"      # the same switch as the torch kernel's (mtad.ops.scan_cpp)
LIBRARY = "libmtad_ov_scan.so"
# metadata.json's graph["scan"] for a fused export; the inferencer loads the extension for it
FUSED = "fused-openvino"
NODE = ("mtad", "SelectiveScan")   # ONNX domain, op_type

_LOCK = threading.Lock()
BUILD_SECONDS: float | None = None


class FusedScanNote(UserWarning):
    """The one-time build of the OpenVINO scan extension (mtad's CLI prints "note: ...")."""

    label = "note"


def _openvino_dir() -> Path:
    from mtad.deploy.inferencer import import_openvino

    return Path(import_openvino().__file__).resolve().parent


def _flags() -> list[str]:
    target = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", target):
        raise DeployError(f"{MARCH_ENV}={target!r} is not a CPU name for -march (e.g. x86-64-v3)")
    arm = platform.machine().lower() in ("aarch64", "arm64")
    return [f"-mcpu={target}" if arm and f == "-march=native" else
            f"-march={target}" if f == "-march=native" else f for f in CFLAGS]


def _libs(ov_dir: Path) -> list[Path]:
    """The wheel's libopenvino, ONNX frontend and TBB (versioned names: no .so links)."""
    found = []
    for stem in ("libopenvino.so", "libopenvino_onnx_frontend.so", "libtbb.so"):
        names = sorted((ov_dir / "libs").glob(stem + "*"), key=lambda p: len(p.name))
        if not names:
            raise DeployError(f"{ov_dir / 'libs'}: no {stem}* to link the scan extension against")
        found.append(names[0])
    return found


def cache_root() -> Path:
    root = os.environ.get(DIR_ENV, "").strip()
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "mtad" / "openvino"


def library() -> Path:
    """The extension library's path, built on first use (see the module docstring).

    Raises:
        DeployError: openvino missing or without headers, no C++ compiler, or a failed
            build (the compiler's last lines).
    """
    global BUILD_SECONDS
    ov_dir = _openvino_dir()
    include = ov_dir / "include"
    if not (include / "openvino" / "op" / "op.hpp").is_file():
        raise DeployError(f"the fused scan needs OpenVINO's C++ headers, which {ov_dir} lacks "
                          f"(no include/openvino/op/op.hpp)")
    compiler = os.environ.get("CXX", "").strip() or "g++"
    import openvino

    flags, libs = _flags(), _libs(ov_dir)
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(flags).encode(), compiler.encode(),
                 str(getattr(openvino, "__version__", "")).encode(), str(ov_dir).encode(),
                 platform.machine().encode(), cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    folder = cache_root() / f"ov_scan_{h.hexdigest()[:12]}"
    lib = folder / LIBRARY
    if lib.is_file():
        return lib
    if shutil.which(compiler) is None:   # (a cached build needs none)
        raise DeployError(f"the fused scan needs a C++ compiler: {compiler!r} is not on PATH "
                          f"(install g++ or set CXX)")
    with _LOCK:
        if lib.is_file():
            return lib
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{LIBRARY}.{os.getpid()}.tmp"
        cmd = [compiler, *flags, f"-I{include}", str(SOURCE), "-o", str(tmp),
               *map(str, libs), f"-Wl,-rpath,{ov_dir / 'libs'}"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise DeployError(f"building the OpenVINO scan extension failed "
                              f"({compiler} exit {done.returncode}): {tail[:600]}")
        os.replace(tmp, lib)
        BUILD_SECONDS = time.perf_counter() - start
        warnings.warn(f"built the OpenVINO scan extension in {BUILD_SECONDS:.0f} s (cached in "
                      f"{folder})", FusedScanNote, stacklevel=2)
    return lib


def add_to(core) -> Path:
    """Add the extension to an ``openvino.Core`` (building it if needed); returns its path."""
    lib = library()
    core.add_extension(str(lib))
    return lib


_CORES: list = []    # every Core given the extension: keeps its library loaded for the process


def uses_fused_scan(path) -> bool:
    """True for an ONNX file with ``mtad`` domain nodes (an export made with --fused-scan)."""
    path = Path(path)
    if path.suffix != ".onnx":
        return False
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(o.domain == NODE[0] for o in model.opset_import)


def core(path=None, fused: bool | None = None):
    """An ``openvino.Core``, with the extension added when ``fused`` (None: when ``path`` is
    an ONNX file that uses it, :func:`uses_fused_scan`)."""
    from mtad.deploy.inferencer import import_openvino

    c = import_openvino().Core()
    if fused or (fused is None and path is not None and uses_fused_scan(path)):
        add_to(c)
        _CORES.append(c)
    return c
