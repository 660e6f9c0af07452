"""Files: written so that a crash never leaves a half-written one in place (checkpoints,
calibration.json, run and export folders), and their SHA-256 (provenance of runs,
exports and calibrations). Standard library only: the torch-free inferencer install
uses it too."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def write_atomic(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then rename it
    over ``path``: readers see the old file or the whole new one, never a part. The
    temporary file is removed when ``write`` raises (the exception propagates)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def partial_dir(out: str | Path) -> Path:
    """A new empty folder ``.<name>.partial-XXXX`` beside ``out``, to be filled and then
    renamed to ``out``; it gets the permissions a plain ``mkdir`` would (mkdtemp's 0700
    would stay on the renamed folder)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
