"""`mtad predict`: score new images with a trained run or an exported model.

Per image: ``<stem>_overlay.png`` (heat map, outline of the predicted defect,
score and verdict), ``<stem>_pred_mask.png`` (the predicted defect mask, 0/255,
at the image's own size) and a scores.csv row. The same files come from a
checkpoint (torch) and from an export (onnxruntime / OpenVINO): both go through
`mtad.deploy.open_model`.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np

from mtad.data.errors import DataError
from mtad.data.imageio import IMAGE_EXTENSIONS, UNREAD_IMAGE_EXTENSIONS, read_rgb
from mtad.data.transforms import model_input
from mtad.postprocess import decide, select_thresholds
from mtad.report.cells import printable, write_csv
from mtad.report.drawing import draw_decision, save_png

logger = logging.getLogger(__name__)

# Written into every output folder: a folder holding it is never read as input,
# so a second run never scores the first run's overlays and masks.
MARKER = ".mtad-predict"
CSV_COLUMNS = ["image_path", "class_name", "pred_score", "pred_label", "verdict",
               "image_threshold", "ng_threshold", "pixel_threshold", "image_threshold_source", "pixel_threshold_source"]


def collect_inputs(inputs: list[str | Path], out_dir: str | Path | None = None,
                   unread: list[Path] | None = None) -> list[tuple[Path, str]]:
    """(file, output stem) pairs. Folders are searched recursively; stems keep the
    sub-path and are made unique, so same-named files never overwrite each other.
    The output folder, and any folder mtad predict wrote (it holds `MARKER`),
    are left out. Files in the folders whose suffix names an image format mtad does
    not read (`UNREAD_IMAGE_EXTENSIONS`: .gif, .heic, .avif, ...) are appended to
    ``unread`` when it is given; other files are ignored.

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
            candidates = sorted(p for p in path.rglob("*")
                                if p.suffix.lower() in IMAGE_EXTENSIONS | UNREAD_IMAGE_EXTENSIONS
                                and p.is_file()
                                and not any(ours(d) for d in _parents_within(p.parent, path)))
            files = [p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS]
            if unread is not None:
                unread += [p for p in candidates if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if not files:
                logger.warning("no images in folder %s", path)
            found += [(f, "__".join(f.relative_to(path.parent).with_suffix("").parts))
                      for f in files]
        elif path.exists():
            if ours(path.parent):
                logger.warning("skipped %s: it is in a folder mtad predict wrote (%s)", path,
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


def check_out_dir(out_dir: str | Path) -> None:
    """Raises FileExistsError when ``out_dir`` is an existing file (it must be a folder)."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise FileExistsError(f"--out {printable(out_dir)} is an existing file; --out must be "
                              "a folder (a new one, or one mtad predict wrote)")


def predict(model, inputs: list[str | Path], out_dir: str | Path, class_name: str | None = None,
            threshold: float | None = None, pixel_threshold: float | None = None,
            batch_size: int = 8, log=print, station=None, log_fn=None) -> dict:
    """Score images with `model` (from `mtad.deploy.open_model`); write overlays,
    predicted masks and scores.csv into `out_dir`; return a summary.

    Args:
        model: an `mtad.deploy.Inferencer` (checkpoint or export).
        inputs: image files or folders (searched recursively).
        class_name: use that class's calibrated thresholds (default: pooled).
        threshold, pixel_threshold: explicit thresholds, overriding the calibrated ones.
        batch_size: images per model call (an integer >= 1; ValueError otherwise).
        station: a `mtad.station.recorder.Station` (--log): one committed row per image
            (raises `mtad.station.log.LogWriteError` when one cannot be written).
        log: called with each progress line (str), as elsewhere in mtad.
        log_fn: the old name of ``log``, still taken (DeprecationWarning) for one release.

    Raises:
        mtad.postprocess.ThresholdError: unknown class, or no image threshold at all.
        FileNotFoundError: an input that does not exist.
        FileExistsError: ``out_dir`` is an existing file.
    """
    if log_fn is not None:
        warnings.warn("predict(log_fn=) is deprecated; use log=", DeprecationWarning,
                      stacklevel=2)
        log = log_fn
    check_out_dir(out_dir)
    choice = select_thresholds(model.thresholds, class_name, threshold, pixel_threshold,
                               model.class_names)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    out = Path(out_dir)
    unread: list[Path] = []
    files = collect_inputs(inputs, out, unread)
    readable = ", ".join(sorted(IMAGE_EXTENSIONS))
    failed = []
    for file in unread:
        failed.append(printable(file))
        log(f"skipped: {printable(file)}: {file.suffix} images are not read by mtad "
               f"(it reads {readable}); convert it to PNG")
    if not files:  # nothing to score: nothing written, not even the output folder
        log("0 images scored: no image files among the inputs; nothing written")
        return {"processed": 0, "skipped": failed, "anomalous": 0, **choice.as_dict()}
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by mtad predict; this folder is never read as input\n")
    ng = "none" if choice.ng is None else f"{choice.ng:.6g}"
    log(f"image threshold {choice.image:.6g} (flagged: pred_score {choice.rule} it), "
           f"NG threshold {ng}, from {choice.image_source}; "
           f"pixel threshold {choice.pixel:.6g} from {choice.pixel_source}")
    rows = []

    def flush(batch):
        images = np.stack([b[2] for b in batch])
        started = time.perf_counter()
        maps, scores = model.predict(images)
        latency_ms = 1000 * (time.perf_counter() - started) / len(batch)
        for (file, stem, _, rgb), amap, score in zip(batch, maps[:, 0], scores.tolist()):
            d = decide(amap, score, choice, rgb.shape[:2])
            save_png(draw_decision(rgb, d, choice, score), out / f"{stem}_overlay.png")
            mask = d.pred_mask.view(np.uint8)   # bool: 1 byte a pixel, then 0/255 in place
            mask *= 255
            save_png(mask, out / f"{stem}_pred_mask.png")
            rows.append({"image_path": printable(file), "class_name": class_name or "",
                         "pred_score": f"{score:.6g}", "pred_label": int(d.pred_label),
                         "verdict": d.verdict, "image_threshold": f"{choice.image:.6g}",
                         "ng_threshold": "" if choice.ng is None else f"{choice.ng:.6g}",
                         "pixel_threshold": f"{choice.pixel:.6g}",
                         "image_threshold_source": choice.image_source,
                         "pixel_threshold_source": choice.pixel_source})
            if station is not None:
                verdict = rows[-1].get("verdict") or ("NG" if rows[-1]["pred_label"] else "OK")
                station.record(str(file), class_name, score, verdict,
                               getattr(model.thresholds, "version", None), latency_ms,
                               Path(file).read_bytes(), lambda: rgb)

    batch = []
    for file, stem in files:
        try:
            rgb = read_rgb(file)
        except DataError as exc:
            failed.append(printable(file))
            log(f"skipped: {printable(exc)}")  # the message names the file
            continue
        batch.append((file, stem, model_input(rgb, model.image_size), rgb))
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    write_csv(out / "scores.csv", CSV_COLUMNS, rows)
    summary = {"processed": len(rows), "skipped": failed,
               "anomalous": sum(r["pred_label"] for r in rows),
               "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in ("OK", "REVIEW", "NG")},
               **choice.as_dict()}
    counts = ", ".join(f"{n} {v}" for v, n in summary["verdicts"].items())
    log(f"{len(rows)} images scored ({counts}); "
           f"{len(failed)} skipped; outputs in {printable(out)}")
    return summary
