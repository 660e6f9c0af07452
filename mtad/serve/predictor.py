"""What `mtad serve` does with a request's images, without HTTP: the predictor.

``Predictor`` holds the model, its thresholds and the decisions: it picks the
thresholds a request asks for, turns uploads into model inputs
(`mtad.data.transforms.model_input`, the path training takes), and turns the
model's output into one answer per file (verdict, thresholds, encoded anomaly
map), keeping uploads with ``--save`` and committing inspection rows with ``--log``.
The HTTP layer (`mtad.serve.app`) reads requests and queues the model call
(`mtad.serve.worker`); the process lifecycle is `mtad.serve.server`.
"""
from __future__ import annotations

import base64
import io
import re
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mtad.data.transforms import model_input
from mtad.postprocess import decide, select_thresholds, verdict_of
from mtad.report.cells import write_csv
from mtad.report.drawing import draw_decision, save_png
from mtad.serve.uploads import (DecodeGate, Limits, Upload, UploadError, charge_request_pixels,
                               decode_image)


def encode_map(anomaly_map: np.ndarray) -> dict:
    """S x S float map -> 8-bit greyscale PNG (base64) with the range that undoes it."""
    lo, hi = float(anomaly_map.min()), float(anomaly_map.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    q = np.clip(np.rint((anomaly_map - lo) * scale), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(q, "L").save(buf, format="PNG", compress_level=1)
    return {"encoding": "png-uint8", "width": int(q.shape[1]), "height": int(q.shape[0]),
            "min": lo, "max": hi, "data": base64.b64encode(buf.getvalue()).decode("ascii")}


class Saver:
    """--save DIR: each upload as sent, its overlay PNG, and a predictions.csv row."""

    FIELDS = ["saved_as", "image_path", "class_name", "pred_score", "pred_label", "verdict",
              "image_threshold", "ng_threshold", "pixel_threshold", "image_threshold_source", "pixel_threshold_source", "time"]

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def save(self, upload: Upload, rgb: np.ndarray, amap: np.ndarray, result: dict,
             choice) -> None:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(upload.filename).stem)[:80] or "image"
        suffix = re.sub(r"[^A-Za-z0-9.]+", "", Path(upload.filename).suffix)[:10]
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}-{stem}"
        (self.folder / f"{name}{suffix}").write_bytes(bytes(upload.data))
        decision = decide(amap, result["pred_score"], choice, rgb.shape[:2])
        picture = draw_decision(rgb, decision, choice, result["pred_score"])
        save_png(picture, self.folder / f"{name}_overlay.png")
        row = {k: result.get(k) for k in self.FIELDS}
        row.update(saved_as=f"{name}{suffix}", time=time.strftime("%Y-%m-%dT%H:%M:%S"))
        with self._lock:   # cells from the upload's name: no spreadsheet formulas (write_csv)
            write_csv(self.folder / "predictions.csv", self.FIELDS, [row], append=True)


class Predictor:
    """The model, its thresholds and the decisions of `mtad serve`.

    Args:
        model: an `mtad.deploy.Inferencer`, loaded once and kept.
        class_name: the class whose thresholds apply when a request names none
            (None: pooled).
        image_threshold, pixel_threshold: override the calibrated thresholds.
        save_dir: also keep every upload, its overlay and a predictions.csv there.
        station: a `mtad.station.recorder.Station` (--log): every image answered 200
            gets its row committed first.
        max_pixels: the decoding limit per photo (default: `mtad.serve.uploads.Limits`'s).
        max_request_pixels: decoded pixels per request, all its files together (default:
            ``Limits``'s); the files past it answer 413. Decoding goes through a
            `mtad.serve.uploads.DecodeGate`: two full-size photos at once server-wide, one
            at a time per client address.

    Raises:
        ThresholdError: ``class_name`` unknown, or no image threshold at all (the
            run was never evaluated and none is given): at start, not at the first request.
    """

    def __init__(self, model, class_name: str | None = None,
                 image_threshold: float | None = None, pixel_threshold: float | None = None,
                 save_dir: str | Path | None = None, station=None,
                 max_pixels: int | None = None, max_request_pixels: int | None = None):
        select_thresholds(model.thresholds, class_name, image_threshold, pixel_threshold,
                          model.class_names)
        self.model, self.class_name, self.station = model, class_name, station
        self.image_threshold, self.pixel_threshold = image_threshold, pixel_threshold
        self.saver = Saver(save_dir) if save_dir is not None else None
        self.size = int(model.image_size)
        self.max_pixels = Limits().max_pixels if max_pixels is None else int(max_pixels)
        self.limits = Limits(max_pixels=self.max_pixels, max_request_pixels=(
            Limits().max_request_pixels if max_request_pixels is None else int(max_request_pixels)))
        self.gate = DecodeGate(slots=2, per_client=1)  # full-size photos in memory at once

    def choose(self, requested: str | None):
        """(class name or None for pooled, `mtad.postprocess.ThresholdChoice`) for a
        request's class field (None: the server's class; "": pooled). Raises
        ThresholdError for an unknown class."""
        chosen = (self.class_name if requested is None else requested) or None
        return chosen, select_thresholds(self.model.thresholds, chosen, self.image_threshold,
                                         self.pixel_threshold, self.model.class_names)

    def decode(self, upload: Upload) -> np.ndarray:
        """The upload's photo, upright 8-bit RGB (raises UploadError: 413 / 415)."""
        with self.gate.any_client():
            return decode_image(bytes(upload.data), upload.filename, self.max_pixels)

    def prepare(self, uploads: list[Upload], client: str | None = None
                ) -> list[tuple[tuple, np.ndarray, float] | None]:
        """Decode each accepted upload: ((height, width), model input 3 x S x S, ms), or
        None with upload.error set (413 past the request's pixel budget). Only the model
        input is kept, not the photo; the upload's bytes only when --save or --log needs
        them again. ``client``: the client's address, for the per-client decode turn."""
        out, spent = [], 0
        for upload in uploads:
            if upload.error is not None:
                out.append(None)
                continue
            t = time.perf_counter()
            try:
                spent = charge_request_pixels(upload.data, upload.filename, spent, self.limits)
                with self.gate.slot(client):
                    rgb = decode_image(bytes(upload.data), upload.filename, self.max_pixels)
                    x, shape, rgb = model_input(rgb, self.size), rgb.shape[:2], None
                out.append((shape, x, 1000 * (time.perf_counter() - t)))
            except UploadError as exc:
                upload.error = exc
                out.append(None)
            if self.saver is None and self.station is None:
                upload.data = bytearray()
        return out

    def answer(self, uploads, prepared, computed, choice, chosen, started) -> list[dict]:
        """One result per upload, in order (the JSON of `mtad.serve.app`), from the
        model's output for the prepared ones (``computed``: `mtad.serve.worker.Computed`).
        Raises LogWriteError when --log cannot commit a row (no answer without its row)."""
        results, k = [], 0
        for upload, prep in zip(uploads, prepared):
            if prep is None:
                results.append({"image_path": upload.filename, "status": upload.error.status,
                                "detail": upload.error.message})
                continue
            (height, width), _, decode_ms = prep
            amap, score = computed.anomaly_map[k, 0], float(computed.pred_score[k])
            k += 1
            verdict = verdict_of(score, choice)
            result = {"image_path": upload.filename, "status": 200, "pred_score": score,
                      "pred_label": verdict != "OK", "verdict": verdict,
                      "class_name": chosen, "class": chosen,   # "class": old name, kept one release
                      **choice.as_dict(), "width": int(width), "height": int(height),
                      "anomaly_map": encode_map(amap),
                      "timing_ms": {"decode": round(decode_ms, 2),
                                    "wait": round(computed.wait_ms, 2),
                                    "inference": round(computed.inference_ms, 2),
                                    "batch_size": computed.batch_size}}
            if self.saver is not None:
                with self.gate.any_client():
                    photo = decode_image(bytes(upload.data), upload.filename, self.max_pixels)
                    self.saver.save(upload, photo, amap, result, choice)
            if self.station is not None:   # committed before the answer leaves
                result["inspection_id"] = self._log(upload, amap, result, choice, chosen,
                                                    started)
            result["timing_ms"]["total"] = round(1000 * (time.perf_counter() - started), 2)
            results.append(result)
        return results

    def _log(self, upload, amap, result, choice, chosen, started) -> int:
        def draw(rgb):          # the overlay the page and --save show
            decision = decide(amap, result["pred_score"], choice, rgb.shape[:2])
            return draw_decision(rgb, decision, choice, result["pred_score"])

        row = self.station.record(upload.filename, chosen, result["pred_score"],
                                  result["verdict"], getattr(self.model.thresholds, "version", None),
                                  1000 * (time.perf_counter() - started), bytes(upload.data),
                                  lambda: self.decode(upload), draw)   # decoded only if kept
        return row["id"]
