"""report.html: the run on one page: the metrics table, how training went (loss,
metrics at each evaluation, score histograms with thresholds), and test images
beside their ground truth and anomaly maps."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from mtad.metrics.exact import ALL_KEYS
from mtad.metrics.table import COLUMNS
from mtad.postprocess import ThresholdError, decide, resize_map, select_thresholds
from mtad.report import plots
from mtad.report.cells import printable
from mtad.report.drawing import draw_decision, draw_overlay, save_png
from mtad.report.results import write_results

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#1d2330}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #dde;padding-bottom:.2em}
table{border-collapse:collapse} th,td{padding:4px 8px;vertical-align:middle}
table.metrics td,table.metrics th{border-bottom:1px solid #e4e6ee;text-align:right}
table.metrics td:first-child,table.metrics th:first-child{text-align:left}
table.metrics tr.mean td{font-weight:600;border-top:2px solid #99a}
.muted{color:#667;font-size:.9em} img.plot{max-width:100%;border:1px solid #eee}
.scroll{overflow-x:auto} table.examples img{width:192px;max-width:24vw;height:auto}
table.examples .muted{overflow-wrap:anywhere}
@media (max-width:600px){body{margin:1em} table.examples td{padding:2px}}
"""


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def metrics_table(results: dict) -> str:
    """An HTML table: one row per class and a mean row, percentages."""
    head = "".join(f"<th>{c}</th>" for c in ("Class", *COLUMNS))
    rows = [f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_pct(row[k])}</td>" for k in ALL_KEYS)
            + "</tr>" for name, row in results["classes"].items()]
    rows.append('<tr class="mean"><td>Mean</td>'
                + "".join(f"<td>{_pct(results['mean'][k])}</td>" for k in ALL_KEYS) + "</tr>")
    return f'<div class="scroll"><table class="metrics"><tr>{head}</tr>{"".join(rows)}</table></div>'


def _examples_rows(img_dir: Path, dataset, examples: dict, thresholds: dict) -> list[str]:
    from mtad.data import denormalise

    rows = []
    for index in sorted(examples):
        item = dataset[index]
        rgb = denormalise(item["image"])
        mask = (item["gt_mask"][0].numpy() > 0.5).astype(np.uint8) * 255
        amap = resize_map(np.asarray(examples[index]["anomaly_map"], np.float32), rgb.shape[:2])
        score = examples[index]["pred_score"]
        stem = f"{index:05d}"
        save_png(rgb, img_dir / f"{stem}_image.png")
        save_png(mask, img_dir / f"{stem}_truth.png")
        try:   # the one decision path, with the item's class thresholds
            choice = select_thresholds(thresholds, item["class_name"]
                                       if item["class_name"] in (thresholds.get("classes") or {})
                                       else None)
        except ThresholdError:  # no image threshold (no anomalous test image): map only
            save_png(draw_overlay(rgb, amap, None), img_dir / f"{stem}_map.png")
        else:
            save_png(draw_decision(rgb, decide(amap, score, choice), choice, score),
                     img_dir / f"{stem}_map.png")
        caption = (f"{html.escape(item['class_name'])} / {html.escape(item['defect'])} &middot; "
                   f"score {score:.4f}")
        cells = "".join(f'<td><img src="report_images/{stem}_{kind}.png" width="192" alt="{kind}"></td>'
                        for kind in ("image", "truth", "map"))
        rows.append(f'<tr><td>{caption}<br><span class="muted">{html.escape(printable(item["image_path"]))}'
                    f"</span></td>{cells}</tr>")
    return rows


def write_report_page(out_dir: Path, results: dict, epoch: int, history: list[dict],
                      dataset=None, examples: dict | None = None,
                      train_loss: list | None = None) -> Path:
    """Write report.html and its images (report_images/) into `out_dir`; returns the page."""
    out_dir = Path(out_dir)
    img_dir = out_dir / "report_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    thresholds = results.get("thresholds") or {}
    parts = [f"<h1>MTAD report</h1><p class=muted>results at epoch {epoch} &middot; "
             f"{html.escape(results.get('method', 'exact'))} metrics"]
    protocol = results.get("protocol")
    if protocol:
        parts.append(f" &middot; pixel metrics at {protocol['mask_size']} px "
                     f"(model input {protocol['image_size']} px)")
    parts.append("</p><h2>Metrics</h2>" + metrics_table(results))
    if results.get("notes"):
        parts.append("<ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>"
                                      for k, v in results["notes"].items()) + "</ul>")

    figures = [
        ("Training loss", plots.plot_loss(train_loss or [], img_dir / "loss.png")),
        ("Test metrics at each evaluation", plots.plot_metrics(history, img_dir / "metrics.png")),
        ("Image scores per class, with the calibrated thresholds",
         plots.plot_score_histograms(results.get("image_scores") or {}, thresholds,
                                     img_dir / "scores.png")),
    ]
    shown = [(title, path) for title, path in figures if path is not None]
    if shown:
        parts.append("<h2>Training</h2>")
        parts += [f'<h3>{title}</h3><img class="plot" src="report_images/{path.name}" alt="{title}">'
                  for title, path in shown]
    if dataset is not None and examples:
        parts.append("<h2>Test images</h2><p class=muted>Heat maps: each image's lowest value is "
                     "dark blue; the calibrated pixel threshold sits mid-scale; above it turns red, "
                     "and the outline marks the predicted defect.</p>")
        parts.append('<div class="scroll"><table class="examples"><tr><th>test image</th>'
                     "<th>image</th><th>ground truth</th><th>anomaly map</th></tr>"
                     + "".join(_examples_rows(img_dir, dataset, examples, thresholds))
                     + "</table></div>")
    page = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>MTAD report</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    path = out_dir / "report.html"
    path.write_text(printable(page), encoding="utf-8")   # names of any bytes (see printable)
    return path


def write_report(out_dir: Path, results: dict, epoch: int, history: list[dict],
                 dataset=None, examples: dict | None = None, train_loss: list | None = None,
                 log=print) -> None:
    """results.json, results.md and report.html (with plots; with example images
    when `dataset` and `examples` are given)."""
    out_dir = Path(out_dir)
    table = write_results(out_dir, results, epoch, history)
    log(f"\nresults at epoch {epoch} ({out_dir / 'results.md'}):\n{table}")
    page = write_report_page(out_dir, results, epoch, history, dataset, examples, train_loss)
    log(f"report page: {page}")
