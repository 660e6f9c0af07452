"""Reports out: results.json / results.md, heat-map overlays, and an HTML page
that shows test images beside their ground truth and anomaly maps."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mtad.metrics import to_markdown

# Anchor colours of a perceptual "turbo"-like ramp: dark blue -> cyan -> yellow -> red.
_RAMP = np.array([
    [48, 18, 59], [70, 107, 227], [40, 188, 235], [50, 241, 152],
    [164, 252, 60], [237, 208, 58], [251, 128, 34], [208, 47, 5], [122, 4, 3],
], dtype=np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (H x W) to uint8 RGB (H x W x 3)."""
    v = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * _RAMP[lo] + t * _RAMP[lo + 1]).round().astype(np.uint8)


def heatmap_scale(anomaly_map: np.ndarray, threshold: float | None) -> np.ndarray:
    """Display scale in [0, 1]: the image's lowest value at 0 and the decision threshold
    at 0.5, so that red always means "above the threshold" and blue the background."""
    low = float(anomaly_map.min())
    if threshold is None:
        top = float(anomaly_map.max())
        return (anomaly_map - low) / (top - low) if top > low else np.zeros_like(anomaly_map)
    return (anomaly_map - low) / (2.0 * max(threshold - low, 1e-12))


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float | None,
            alpha: float = 0.5) -> np.ndarray:
    heat = colorize(heatmap_scale(anomaly_map, threshold)).astype(np.float32)
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * heat).round().astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def best_epoch(history: list[dict], key: str = "mad") -> dict | None:
    scored = [h for h in history if h["mean"].get(key) is not None]
    return max(scored, key=lambda h: h["mean"][key]) if scored else None


def write_results(out_dir: Path, results: dict, epoch: int, history: list[dict]) -> str:
    """results.json and results.md; returns the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"epoch": epoch, **results}
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


def write_report_page(out_dir: Path, dataset, examples: dict, threshold: float | None) -> Path:
    """report.html: image | ground truth | anomaly map overlay, one row per example."""
    from mtad.data import denormalise

    img_dir = out_dir / "report_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in sorted(examples):
        item = dataset[index]
        rgb = denormalise(item["image"])
        mask = (item["mask"][0].numpy() > 0.5).astype(np.uint8) * 255
        amap = examples[index]["map"].float().numpy()
        stem = f"{index:05d}"
        save_png(rgb, img_dir / f"{stem}_image.png")
        save_png(mask, img_dir / f"{stem}_truth.png")
        save_png(overlay(rgb, amap, threshold), img_dir / f"{stem}_map.png")
        caption = (f"{html.escape(item['class_name'])} / {html.escape(item['defect'])} &middot; "
                   f"score {examples[index]['score']:.4f}")
        cells = "".join(f'<td><img src="report_images/{stem}_{kind}.png" width="192"></td>'
                        for kind in ("image", "truth", "map"))
        rows.append(f"<tr><td>{caption}<br><small>{html.escape(item['path'])}</small></td>{cells}</tr>")
    results_md = (out_dir / "results.md").read_text() if (out_dir / "results.md").exists() else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>MTAD report</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:4px;vertical-align:middle}}
pre{{background:#f4f4f4;padding:1em}}</style></head><body>
<h1>MTAD report</h1>
<pre>{html.escape(results_md)}</pre>
<p>Heat maps: each image's lowest value is dark blue; the calibrated pixel threshold sits mid-scale (green-yellow); above it turns red.</p>
<table><tr><th>test image</th><th>image</th><th>ground truth</th><th>anomaly map</th></tr>
{''.join(rows)}
</table></body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def write_report(out_dir: Path, results: dict, epoch: int, history: list[dict],
                 dataset=None, examples: dict | None = None, log=print) -> None:
    table = write_results(Path(out_dir), results, epoch, history)
    log(f"\nresults at epoch {epoch} ({out_dir / 'results.md'}):\n{table}")
    if dataset is not None and examples:
        page = write_report_page(Path(out_dir), dataset, examples,
                                 results.get("thresholds", {}).get("pixel"))
        log(f"report page: {page}")
