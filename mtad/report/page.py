"""report.html: test images beside their ground truth and anomaly maps."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from mtad.report.overlay import overlay, save_png
from mtad.report.results import write_results


def write_report_page(out_dir: Path, dataset, examples: dict, threshold: float | None) -> Path:
    """report.html: image | ground truth | anomaly map overlay, one row per example."""
    from mtad.data import denormalise

    img_dir = out_dir / "report_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in sorted(examples):
        item = dataset[index]
        rgb = denormalise(item["image"])
        mask = (item["gt_mask"][0].numpy() > 0.5).astype(np.uint8) * 255
        amap = examples[index]["map"].float().numpy()
        stem = f"{index:05d}"
        save_png(rgb, img_dir / f"{stem}_image.png")
        save_png(mask, img_dir / f"{stem}_truth.png")
        save_png(overlay(rgb, amap, threshold), img_dir / f"{stem}_map.png")
        caption = (f"{html.escape(item['class_name'])} / {html.escape(item['defect'])} &middot; "
                   f"score {examples[index]['score']:.4f}")
        cells = "".join(f'<td><img src="report_images/{stem}_{kind}.png" width="192"></td>'
                        for kind in ("image", "truth", "map"))
        rows.append(f"<tr><td>{caption}<br><small>{html.escape(item['image_path'])}</small></td>{cells}</tr>")
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
