"""Prediction on new images: heat-map overlay, binary defect mask and a score per image."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtad.config import config_from_dict
from mtad.data import IMAGE_EXTENSIONS, DataError, prepare_image, read_rgb
from mtad.engine.checkpoint import CheckpointError, load_checkpoint
from mtad.engine.evaluate import autocast
from mtad.models import MTAD
from mtad.report import overlay, save_png

log = logging.getLogger(__name__)


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[MTAD, dict]:
    """The trained model of a checkpoint (its encoder weights come from the checkpoint)."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"])
    cfg.model.weights = "none"  # every weight, the encoder's too, is in the checkpoint
    model = MTAD(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def collect_inputs(inputs: list[str | Path]) -> list[tuple[Path, str]]:
    """(file, output stem) pairs. Folders are searched recursively; stems keep the
    sub-path and are made unique, so same-named files never overwrite each other."""
    found: list[tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                log.warning("no images in folder %s", path)
            found += [(f, "__".join(f.relative_to(path.parent).with_suffix("").parts))
                      for f in files]
        elif path.exists():
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


def thresholds_of(ckpt: dict, image_threshold: float | None,
                  pixel_threshold: float | None) -> tuple[float, float, str]:
    saved = ckpt.get("thresholds") or {}
    image = image_threshold if image_threshold is not None else saved.get("image")
    pixel = pixel_threshold if pixel_threshold is not None else saved.get("pixel")
    if image is None or pixel is None:
        raise CheckpointError(
            "the checkpoint holds no calibrated thresholds (it was never evaluated): "
            "pass --threshold (and optionally --pixel-threshold)")
    source = "command line" if image_threshold is not None else saved.get("source", "checkpoint")
    return float(image), float(pixel), source


@torch.no_grad()
def predict(checkpoint: str | Path, inputs: list[str | Path], out_dir: str | Path,
            threshold: float | None = None, pixel_threshold: float | None = None,
            device: torch.device | str = "cpu", batch_size: int = 8, amp: str = "none",
            log_fn=print) -> dict:
    """Write <stem>_overlay.png, <stem>_mask.png and scores.csv; return a summary."""
    device = torch.device(device)
    model, ckpt = load_model(checkpoint, device)
    image_size = ckpt["config"]["data"]["image_size"]
    image_thr, pixel_thr, source = thresholds_of(ckpt, threshold, pixel_threshold)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = collect_inputs(inputs)
    rows, failed = [], []

    def flush(batch):
        images = torch.stack([b[2] for b in batch]).to(device)
        with autocast(device, amp):
            pred = model.predict(images)
        for (file, stem, _, rgb), amap, score in zip(batch, pred.anomaly_map.float().cpu(),
                                                     pred.pred_score.float().cpu().tolist()):
            h, w = rgb.shape[:2]
            full = F.interpolate(amap[None], size=(h, w), mode="bilinear",
                                 align_corners=False)[0, 0].numpy()
            save_png(overlay(rgb, full, pixel_thr), out / f"{stem}_overlay.png")
            save_png(((full >= pixel_thr) * 255).astype(np.uint8), out / f"{stem}_mask.png")
            rows.append({"path": str(file), "score": f"{score:.6g}",
                         "is_anomalous": int(score >= image_thr)})

    batch = []
    for file, stem in files:
        try:
            rgb = read_rgb(file)
        except DataError as exc:
            failed.append(str(file))
            log_fn(f"skipped {file}: {exc}")
            continue
        tensor, _ = prepare_image(rgb, image_size)
        batch.append((file, stem, tensor, rgb))
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "score", "is_anomalous"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"processed": len(rows), "skipped": failed, "anomalous": sum(r["is_anomalous"] for r in rows),
               "image_threshold": image_thr, "pixel_threshold": pixel_thr, "threshold_source": source}
    log_fn(f"{len(rows)} images scored ({summary['anomalous']} anomalous at threshold "
           f"{image_thr:.4g}, from {source}); {len(failed)} skipped; outputs in {out}")
    return summary
