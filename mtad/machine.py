"""Facts about this machine that compiled code depends on (torch-free)."""
from __future__ import annotations

import platform


def cpu_flags() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them ("flags" on x86-64, "Features"
    on ARM), else `platform.processor()`: part of the cache keys of the compiled scan
    kernels (`mtad.ops.scan_cpp`, `mtad.deploy.fused_scan`), so that a build made for
    one instruction set is never loaded on another."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
