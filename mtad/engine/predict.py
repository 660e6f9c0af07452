"""`mtad predict`: score new images with a trained run or an exported model.

Per image: ``<stem>_overlay.png`` (heat map, outline of the predicted defect,
score and verdict), ``<stem>_pred_mask.png`` (the predicted defect mask, 0/255,
at the image's own size) and a scores.csv row. The same files come from a
checkpoint (torch) and from an export (onnxruntime / OpenVINO): both go through
`mtad.deploy.open_model`.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from mtad.data.errors import DataError
from mtad.data.imageio import IMAGE_EXTENSIONS, read_rgb
from mtad.data.transforms import resize_rgb, to_unit_float
from mtad.postprocess import decide, select_thresholds
from mtad.report.drawing import draw_decision, save_png

log = logging.getLogger(__name__)

# Written into every output folder: a folder holding it is never read as input,
# so a second run never scores the first run's overlays and masks.
MARKER = ".mtad-predict"
CSV_COLUMNS = ["image_path", "class_name", "pred_score", "pred_label", "verdict",
               "image_threshold", "ng_threshold", "pixel_threshold", "image_threshold_source", "pixel_threshold_source"]


def collect_inputs(inputs: list[str | Path], out_dir: str | Path | None = None
                   ) -> list[tuple[Path, str]]:
    """(file, output stem) pairs. Folders are searched recursively; stems keep the
    sub-path and are made unique, so same-named files never overwrite each other.
    The output folder, and any folder mtad predict wrote (it holds `MARKER`),
    are left out.

    Raises:
        FileNotFoundError: an input that does not exist.
        DataError: `out_dir` is one of the input folders (its images would sit
            beside the outputs, and the folder would be marked as predict's).
    """
    out = Path(out_dir).resolve() if out_dir is not None else None
    for raw in inputs:
        if out is not None and Path(raw).is_dir() and Path(raw).resolve() == out:
            raise DataError(f"output folder {out_dir} is also an input folder; "
                            "choose another output folder")

    def ours(folder: Path) -> bool:
        folder = folder.resolve()
        return folder == out or (folder / MARKER).exists()

    found: list[tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(ours(d) for d in _parents_within(p.parent, path)))
            if not files:
                log.warning("no images in folder %s", path)
            found += [(f, "__".join(f.relative_to(path.parent).with_suffix("").parts))
                      for f in files]
        elif path.exists():
            if ours(path.parent):
                log.warning("skipped %s: it is in a folder mtad predict wrote (%s)", path,
                            path.parent / MARKER)
            else:
                found.append((path, path.stem))
        else:
            raise FileNotFoundError(f"input not found: {path}")
    used: dict[str, int] = {}
    unique = []
    for file, stem in found:
        count = used.get(stem, 0)
        used[stem] = count + 1
        unique.append((file, stem if count == 0 else f"{stem}-{count + 1}"))
    return unique


def _parents_within(folder: Path, top: Path) -> list[Path]:
    """`folder` and its parents up to and including `top`."""
    chain = [folder]
    while chain[-1] != top and chain[-1] != chain[-1].parent:
        chain.append(chain[-1].parent)
    return chain


def predict(model, inputs: list[str | Path], out_dir: str | Path, class_name: str | None = None,
            threshold: float | None = None, pixel_threshold: float | None = None,
            batch_size: int = 8, log_fn=print) -> dict:
    """Score images with `model` (from `mtad.deploy.open_model`); write overlays,
    predicted masks and scores.csv into `out_dir`; return a summary.

    Args:
        model: an `mtad.deploy.Inferencer` (checkpoint or export).
        inputs: image files or folders (searched recursively).
        class_name: use that class's calibrated thresholds (default: pooled).
        threshold, pixel_threshold: explicit thresholds, overriding the calibrated ones.

    Raises:
        mtad.postprocess.ThresholdError: unknown class, or no image threshold at all.
        FileNotFoundError: an input that does not exist.
    """
    choice = select_thresholds(model.thresholds, class_name, threshold, pixel_threshold,
                               model.class_names)
    out = Path(out_dir)
    files = collect_inputs(inputs, out)
    if not files:  # nothing to score: nothing written, not even the output folder
        log_fn("0 images scored: no image files among the inputs; nothing written")
        return {"processed": 0, "skipped": [], "anomalous": 0, **choice.as_dict()}
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by mtad predict; this folder is never read as input\n")
    ng = "none" if choice.ng is None else f"{choice.ng:.6g}"
    log_fn(f"image threshold {choice.image:.6g} (flagged: pred_score {choice.rule} it), "
           f"NG threshold {ng}, from {choice.image_source}; "
           f"pixel threshold {choice.pixel:.6g} from {choice.pixel_source}")
    rows, failed = [], []

    def flush(batch):
        images = to_unit_float(np.stack([b[2] for b in batch]))
        maps, scores = model.predict(images)
        for (file, stem, _, rgb), amap, score in zip(batch, maps[:, 0], scores.tolist()):
            d = decide(amap, score, choice, rgb.shape[:2])
            save_png(draw_decision(rgb, d, choice, score), out / f"{stem}_overlay.png")
            save_png((d.pred_mask * 255).astype(np.uint8), out / f"{stem}_pred_mask.png")
            rows.append({"image_path": str(file), "class_name": class_name or "",
                         "pred_score": f"{score:.6g}", "pred_label": int(d.pred_label),
                         "verdict": d.verdict, "image_threshold": f"{choice.image:.6g}",
                         "ng_threshold": "" if choice.ng is None else f"{choice.ng:.6g}",
                         "pixel_threshold": f"{choice.pixel:.6g}",
                         "image_threshold_source": choice.image_source,
                         "pixel_threshold_source": choice.pixel_source})

    batch = []
    for file, stem in files:
        try:
            rgb = read_rgb(file)
        except DataError as exc:
            failed.append(str(file))
            log_fn(f"skipped: {exc}")  # the message names the file
            continue
        batch.append((file, stem, resize_rgb(rgb, model.image_size), rgb))
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = {"processed": len(rows), "skipped": failed,
               "anomalous": sum(r["pred_label"] for r in rows),
               "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in ("OK", "REVIEW", "NG")},
               **choice.as_dict()}
    counts = ", ".join(f"{n} {v}" for v, n in summary["verdicts"].items())
    log_fn(f"{len(rows)} images scored ({counts}); "
           f"{len(failed)} skipped; outputs in {out}")
    return summary
