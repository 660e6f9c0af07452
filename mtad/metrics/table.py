"""Markdown table of Evaluator.compute() results, as papers print them."""
from __future__ import annotations

from .exact import ALL_KEYS

COLUMNS = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO", "IoU-max", "mAD")


def _pct(v) -> str:
    return "n/a" if v is None else f"{100.0 * v:.1f}"


def to_markdown(results: dict) -> str:
    """One row per class plus a mean row; percentages with one decimal, "n/a"
    where undefined; notes and the method (exact or approximate) below."""
    lines = ["| Class | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, row in results["classes"].items():
        lines.append(f"| {name} | " + " | ".join(_pct(row[k]) for k in ALL_KEYS) + " |")
    lines.append("| **Mean** | " + " | ".join(_pct(results["mean"][k]) for k in ALL_KEYS) + " |")
    lines.append("")
    if results.get("notes"):
        lines.append("Notes:")
        lines += [f"- {name}: {msg}" for name, msg in results["notes"].items()]
        lines.append("")
    if results.get("approximate"):
        worst = max((b for cls in results.get("error_bounds", {}).values() for b in cls.values()
                     if b is not None), default=None)
        extra = "" if worst is None else f"; largest guaranteed error bound {100.0 * worst:.2f} points"
        lines.append(f"Method: {results['method']}{extra}.")
    else:
        lines.append("Method: exact (every distinct threshold).")
    return "\n".join(lines) + "\n"
