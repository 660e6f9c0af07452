"""results.json and results.md: the metrics of a run, per class and mean."""
from __future__ import annotations

import json
from pathlib import Path

from mtad.metrics.table import to_markdown


def best_epoch(history: list[dict], key: str = "mad") -> dict | None:
    scored = [h for h in history if h["mean"].get(key) is not None]
    return max(scored, key=lambda h: h["mean"][key]) if scored else None


# Parts of evaluation results that feed the report page but not results.json:
# example maps and every image's score (large for large test sets).
TRANSIENT = ("examples", "image_scores")


def write_results(out_dir: Path, results: dict, epoch: int, history: list[dict]) -> str:
    """results.json and results.md; returns the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"epoch": epoch, **{k: v for k, v in results.items() if k not in TRANSIENT}}
    best = best_epoch(history)
    if best is not None and len(history) > 1:
        payload["best"] = {"epoch": best["epoch"], "mean": best["mean"], "by": "mad"}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2))
    table = to_markdown(results)
    lines = [f"# MTAD results, last epoch ({epoch})", "", table]
    if "best" in payload:
        b = payload["best"]
        lines += ["", f"Best epoch by mAD (labelled, not the reported result): epoch {b['epoch']}, "
                  f"mAD {100 * b['mean']['mad']:.1f}"]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return table
