"""Exact, fast anomaly-detection metrics (image/pixel AUROC, AP, F1-max, AUPRO, IoU-max, mAD).

compute_metrics: one class, exact. f1_max_threshold: F1-optimal threshold.
Evaluator: per-class accumulation from a test loop (exact or bounded-memory
streaming), mergeable across processes. to_markdown: the results table.
"""
from .evaluator import Evaluator
from .exact import ALL_KEYS, METRICS, compute_metrics, f1_max_threshold
from .table import to_markdown

__all__ = ["ALL_KEYS", "METRICS", "Evaluator", "compute_metrics", "f1_max_threshold", "to_markdown"]
