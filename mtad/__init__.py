"""mtad: multi-class industrial anomaly detection with the MTAD Mamba-Transformer.

The public API is imported lazily so that `import mtad` stays cheap (the CLI's
`--help` should not pay for torch and timm).
"""
__version__ = "0.1.0"

_API = {
    "MTAD": ("mtad.models", "MTAD"),
    "MTADConfig": ("mtad.models", "MTADConfig"),
    "open_dataset": ("mtad.data", "open_dataset"),
    "compute_metrics": ("mtad.metrics", "compute_metrics"),
    "selective_scan": ("mtad.ops", "selective_scan"),
}

__all__ = list(_API) + ["__version__"]


def __getattr__(name):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mtad' has no attribute {name!r}")
