"""mtad: multi-class industrial anomaly detection with the MTAD Mamba-Transformer.

The public API is imported lazily so that `import mtad` stays cheap (the CLI's
`--help` should not pay for torch and timm) and works without torch (the
inferencer of an exported model).
"""
from mtad._lazy import lazy_namespace

__version__ = "0.1.0"

_API = {
    "MTAD": "mtad.models",
    "MTADConfig": "mtad.config",
    "open_dataset": "mtad.data",
    "compute_metrics": "mtad.metrics",
    "selective_scan": "mtad.ops",
}

__all__ = list(_API) + ["__version__"]
__getattr__, __dir__ = lazy_namespace(__name__, _API)
