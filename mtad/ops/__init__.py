"""Low-level operators: the selective scan (Mamba-1) with CPU and optional CUDA backends."""
from mtad.ops.scan import (BACKENDS, ENV_VAR, available_backends, default_chunk_size,
                           selective_scan, selective_scan_reference)

__all__ = ["selective_scan", "selective_scan_reference", "available_backends", "BACKENDS",
           "ENV_VAR", "default_chunk_size"]
