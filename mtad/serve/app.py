"""`mtad serve`: the inspection page and the REST API (FastAPI), one model loaded once.

Endpoints:
    GET  /              the inspection page (static HTML/CSS/JS from this package)
    POST /api/predict   multipart: ``files`` (repeated), optional ``class``
    GET  /api/model     metadata, classes, thresholds (with sources), metrics, loss curve
    GET  /health        {"status": "ok", "in_flight", "capacity", "served"}; with a log
                        also "log": {"path", "ok", "detail"} ("status": "log failing")
    /api/inspections..., /api/monitor   with --log (`mtad.serve.station`)
    GET  /docs          OpenAPI page (offline when fastapi-offline is installed),
                        /openapi.json always

POST /api/predict answers, per file in request order::

    {"image_path": "part.png", "status": 200, "pred_score": 3.1, "pred_label": true,
     "verdict": "OK" | "REVIEW" | "NG",              # pred_label: verdict is not OK
     "class": "brick" | null, "image_threshold": .., "ng_threshold": .. | null,
     "pixel_threshold": .., "threshold_rule": ">=" | ">",
     "image_threshold_source": "..", "pixel_threshold_source": "..",
     "width": W, "height": H,                       # the photo's size (upright)
     "anomaly_map": {"encoding": "png-uint8", "width": S, "height": S,
                     "min": lo, "max": hi, "data": "<base64 PNG>"},
     "timing_ms": {"decode", "wait", "inference", "batch_size", "total"}}
    or {"image_path": .., "status": 413 | 415, "detail": "<why, naming the file>"}

The map is the model's raw S x S map, quantised to 8 bits over [lo, hi]
(value = lo + q / 255 * (hi - lo)); the page resizes it to the photo with the
same bilinear rule as `mtad.postprocess.resize_map` and re-decides verdicts and
outlines when its sliders move, without asking the server again.
A request with one file answers with that file's status and a ``detail``; with
several, 200 and a status per file; 413 for the request as a whole when its
body or file count passes the limits, 422 for an unknown class, 408 when the body
stops arriving (no data for UPLOAD_IDLE_S), 503 with Retry-After when the queue is full.
The body is read whole before the request takes a place in the model's queue.
"""
from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import socket
import threading
import time
import types
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from mtad.data.transforms import model_input
from mtad.postprocess import ThresholdError, decide, select_thresholds, verdict_of
from mtad.report.cells import write_csv
from mtad.report.drawing import (BANNER_ALPHA, DEFECTIVE_RGB, OK_RGB, OUTLINE_RGB, REVIEW_RGB,
                                 draw_decision, ramp_lut, save_png)
from mtad.serve.modelinfo import model_info
from mtad.serve.uploads import FormReader, Limits, Upload, UploadError, decode_image, human_bytes
from mtad.serve.worker import InferenceWorker
from mtad.station.log import LogWriteError

STATIC = Path(__file__).parent / "static"
UPLOAD_TIMEOUT_S = 120.0        # a whole request body
UPLOAD_IDLE_S = 10.0            # between two pieces of a body; also before a request's first byte

PREDICT_BODY = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "images (PNG, JPEG, BMP, TIFF, WebP), one part each"},
            "class": {"type": "string", "description": "product class whose calibrated "
                      "thresholds apply (default: the server's --class, else pooled; "
                      "empty: pooled)"}}}}}},
    "responses": {"408": {"description": "the upload stalled (no data for 10 s)"},
                  "413": {"description": "a file or the request is too large"},
                  "415": {"description": "not a decodable image (single file)"},
                  "422": {"description": "unknown class"},
                  "503": {"description": "queue full; see Retry-After"}},
}


def encode_map(anomaly_map: np.ndarray) -> dict:
    """S x S float map -> 8-bit greyscale PNG (base64) with the range that undoes it."""
    lo, hi = float(anomaly_map.min()), float(anomaly_map.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    q = np.clip(np.rint((anomaly_map - lo) * scale), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(q, "L").save(buf, format="PNG", compress_level=1)
    return {"encoding": "png-uint8", "width": int(q.shape[1]), "height": int(q.shape[0]),
            "min": lo, "max": hi, "data": base64.b64encode(buf.getvalue()).decode("ascii")}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


class _Saver:
    """--save DIR: each upload as sent, its overlay PNG, and a predictions.csv row."""

    FIELDS = ["saved_as", "image_path", "class", "pred_score", "pred_label", "verdict",
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


def create_app(model, class_name: str | None = None, image_threshold: float | None = None,
               pixel_threshold: float | None = None, save_dir: str | Path | None = None,
               limits: Limits | None = None, worker_thread: bool = True,
               station=None) -> FastAPI:
    """The FastAPI app serving ``model`` (an `mtad.deploy.Inferencer`).

    With ``worker_thread=False`` the inference worker (``app.state.worker``) starts no
    thread: the caller runs ``app.state.worker.run_forever()`` (as `serve` does).

    Args:
        model: loaded once (e.g. ``mtad.deploy.open_model(path)``) and kept.
        class_name: the class whose thresholds apply when a request names none
            (None: pooled).
        image_threshold, pixel_threshold: override the calibrated thresholds.
        save_dir: also keep every upload, its overlay and a predictions.csv there.
        limits: sizes, queue and batch (`mtad.serve.uploads.Limits`).
        station: a `mtad.station.recorder.Station` (--log): every image answered 200 gets
            its row committed first (``latency_ms``: from the request's arrival to the
            decision); a failed write answers 503 with the reason.

    Raises:
        ThresholdError: ``class_name`` unknown, or no image threshold at all (the
            run was never evaluated and none is given).
    """
    limits = limits or Limits()
    select_thresholds(model.thresholds, class_name, image_threshold, pixel_threshold,
                      model.class_names)  # fail at start, not at the first request
    worker = InferenceWorker(model, limits.queue, limits.max_batch, thread=worker_thread)
    saver = _Saver(save_dir) if save_dir is not None else None
    size = int(model.image_size)
    draw_params = {"ramp": ramp_lut(), "alpha": 0.5, "outline_rgb": OUTLINE_RGB,
                   "ok_rgb": OK_RGB, "review_rgb": REVIEW_RGB, "defective_rgb": DEFECTIVE_RGB,
                   "banner_alpha": BANNER_ALPHA}
    info = model_info(model, class_name, image_threshold, pixel_threshold, limits.as_dict(),
                      draw_params)

    async def lifespan(app):
        yield
        worker.close()

    app = FastAPI(title="mtad serve", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Anomaly detection with a trained MTAD model: "
                  "POST images to /api/predict; the page at / does it in a browser.")
    app.state.worker = worker
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", summary="liveness and queue state")
    def health():
        body = {"status": "ok", "in_flight": worker.in_flight, "capacity": worker.capacity,
                "served": worker.served}
        if station is not None:
            body.update(station.health())
            if not body["log"]["ok"]:
                body["status"] = "log failing"
        return body

    if station is not None:
        from mtad.serve.station import add_routes

        add_routes(app, station, lambda: model.thresholds)

    @app.get("/api/model", summary="metadata, classes, thresholds, metrics, loss curve")
    def api_model():
        return info

    try:
        import fastapi_offline  # swagger-ui's files, shipped in a wheel: /docs works offline
    except ImportError:
        fastapi_offline = None
    else:
        app.mount("/docs-static", StaticFiles(directory=Path(fastapi_offline.__file__).parent
                                              / "static"), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs():
        if fastapi_offline is None:
            return HTMLResponse("<!doctype html><title>mtad serve API</title><p>The interactive "
                                "API page needs the package <code>fastapi-offline</code> (pip "
                                "install 'mtad[serve]'); the API description is at "
                                "<a href='/openapi.json'>/openapi.json</a>.</p>")
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="mtad serve API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon.png")

    decoding = threading.BoundedSemaphore(2)   # full-size photos in memory at once, server-wide
    # bytes of the bodies being received (not yet queued), all requests together
    receiving = types.SimpleNamespace(bytes=0, budget=(limits.queue + 1) * limits.max_request_bytes)

    def prepare(uploads: list[Upload]) -> list[tuple[tuple, np.ndarray, float] | None]:
        """Decode each accepted upload: ((height, width), model input, ms), or None with
        upload.error set. Only the S x S model input is kept, not the photo."""
        out = []
        for upload in uploads:
            if upload.error is not None:
                out.append(None)
                continue
            t = time.perf_counter()
            try:
                with decoding:
                    rgb = decode_image(bytes(upload.data), upload.filename, limits.max_pixels)
                    x, shape, rgb = model_input(rgb, size), rgb.shape[:2], None
                out.append((shape, x, 1000 * (time.perf_counter() - t)))
            except UploadError as exc:
                upload.error = exc
                out.append(None)
            if saver is None and station is None:
                upload.data = bytearray()
        return out

    def finish(uploads, prepared, computed, choice, chosen, started) -> list[dict]:
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
                      "pred_label": verdict != "OK", "verdict": verdict, "class": chosen,
                      **choice.as_dict(), "width": int(width), "height": int(height),
                      "anomaly_map": encode_map(amap),
                      "timing_ms": {"decode": round(decode_ms, 2),
                                    "wait": round(computed.wait_ms, 2),
                                    "inference": round(computed.inference_ms, 2),
                                    "batch_size": computed.batch_size}}
            if saver is not None:
                with decoding:
                    saver.save(upload, decode_image(bytes(upload.data), upload.filename,
                                                    limits.max_pixels), amap, result, choice)
            if station is not None:     # committed before the answer leaves; raises LogWriteError
                result["inspection_id"] = log_inspection(upload, amap, result, choice, chosen,
                                                         started)
            result["timing_ms"]["total"] = round(1000 * (time.perf_counter() - started), 2)
            results.append(result)
        return results

    def log_inspection(upload, amap, result, choice, chosen, started) -> int:
        def photo():            # decoded again only when its image is kept
            with decoding:
                return decode_image(bytes(upload.data), upload.filename, limits.max_pixels)

        def draw(rgb):          # the overlay the page and --save show
            decision = decide(amap, result["pred_score"], choice, rgb.shape[:2])
            return draw_decision(rgb, decision, choice, result["pred_score"])

        verdict = result.get("verdict") or ("NG" if result["pred_label"] else "OK")
        row = station.record(upload.filename, chosen, result["pred_score"], verdict,
                             getattr(model.thresholds, "version", None),
                             1000 * (time.perf_counter() - started), bytes(upload.data), photo,
                             draw)
        return row["id"]

    @app.post("/api/predict", summary="score images; per file a verdict and an anomaly map",
              openapi_extra=PREDICT_BODY)
    async def api_predict(request: Request):
        started = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
            return _error(413, f"request body of {human_bytes(int(declared))} is larger "
                               f"than the {human_bytes(limits.max_request_bytes)} limit "
                               f"per request")
        # The body is read before the request asks for a place in the model's queue, so a
        # slow or stalled client holds no place: it holds its bytes (from a budget shared
        # by all uploads being received) until it sends the rest or falls silent for
        # UPLOAD_IDLE_S (408).
        held = 0
        try:
            reader = FormReader(request.headers.get("content-type"), limits)
            stream = request.stream().__aiter__()
            deadline = time.monotonic() + UPLOAD_TIMEOUT_S
            while True:
                wait = min(UPLOAD_IDLE_S, deadline - time.monotonic())
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), max(wait, 0.0))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    if wait < UPLOAD_IDLE_S:
                        return _error(408, f"upload not complete after {UPLOAD_TIMEOUT_S:.0f} s")
                    return _error(408, f"upload stalled: no data for {UPLOAD_IDLE_S:.0f} s")
                if receiving.bytes + len(chunk) > receiving.budget:
                    return _error(503, "busy: other uploads are being received; retry in "
                                       f"{UPLOAD_IDLE_S:.0f} s",
                                  {"Retry-After": str(int(UPLOAD_IDLE_S))})
                receiving.bytes += len(chunk)
                held += len(chunk)
                reader.feed(chunk)
            form = reader.close()
            if not form.files:
                raise UploadError(422, "no image: send one or more files in the form "
                                       "field 'files'")
            chosen = form.fields.get("class", class_name)
            chosen = chosen or None                 # "" asks for the pooled thresholds
            try:
                choice = select_thresholds(model.thresholds, chosen, image_threshold,
                                           pixel_threshold, model.class_names)
            except ThresholdError as exc:
                raise UploadError(422, str(exc)) from None
        except UploadError as exc:
            return _error(exc.status, exc.message)
        except ClientDisconnect:
            return Response(status_code=400)      # nobody listens; nothing was kept
        finally:
            receiving.bytes -= held
        if not worker.admit():
            wait = worker.retry_after()
            return _error(503, f"busy: {worker.capacity} requests are already being served or "
                               f"queued; retry in {wait} s", {"Retry-After": str(wait)})
        try:
            uploads = form.files
            prepared = await run_in_threadpool(prepare, uploads)
            good = [p[1] for p in prepared if p is not None]
            computed = None
            if good:
                try:
                    computed = await asyncio.wrap_future(worker.submit(np.stack(good)))
                except Exception as exc:  # e.g. out of GPU memory: this request fails, not the server
                    return _error(500, f"inference failed: {type(exc).__name__}: {exc}")
            try:
                results = await run_in_threadpool(finish, uploads, prepared, computed, choice,
                                                  chosen, started)
            except LogWriteError as exc:   # no answer without its row
                return _error(503, str(exc))
            body = {"results": results, "class": chosen, "image_size": size,
                    "elapsed_ms": round(1000 * (time.perf_counter() - started), 2)}
            status = 200
            if len(results) == 1 and results[0]["status"] != 200:
                status = results[0]["status"]
                body["detail"] = results[0]["detail"]
            return JSONResponse(body, status_code=status)
        finally:
            worker.release()

    return app


def silent_connections_close(seconds: float = UPLOAD_IDLE_S) -> type:
    """uvicorn's HTTP protocol, closing a connection that sends nothing for ``seconds``
    after it opens. uvicorn's keep-alive timeout starts only after a first response, so a
    connection that never sends a byte stays open for ever (uvicorn PR #1192)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Protocol(AutoHTTPProtocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            # cancelled by the first data received, as uvicorn's own keep-alive timer
            self.timeout_keep_alive_task = self.loop.call_later(
                seconds, self.timeout_keep_alive_handler)

    return Protocol


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8000,
          class_name: str | None = None, save_dir: str | Path | None = None,
          limits: Limits | None = None, device: str = "auto",
          image_threshold: float | None = None, pixel_threshold: float | None = None,
          log=print, inspection_log=None) -> None:
    """Load the model once (`mtad.deploy.open_model`) and serve it with uvicorn until
    interrupted.

    ``inspection_log``: {"db", "station", "keep", "keep_days", "drift_window"} for
    --log (`mtad.serve.station`), opened before the model loads.

    Raises:
        CheckpointError: not a readable run, checkpoint or export.
        ThresholdError: unknown ``class_name`` or no threshold available.
        LogError: the --log file is not an mtad log or is newer than this mtad.
    """
    import uvicorn

    from mtad.deploy import open_model

    if not 0 < int(port) < 65536:
        raise ValueError(f"--port: {port} is not a TCP port; allowed: 1-65535")
    try:  # the port first: a taken one is a one-line error before the model loads
        socket.create_server((host, port)).close()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(f"cannot listen on {host}:{port}: {reason}") from None
    station = None
    if inspection_log is not None:   # a bad log file is a one-line error before the model loads
        from mtad.station.recorder import open_station

        station = open_station(**inspection_log)
    model = open_model(model_path, device)
    if station is not None:
        from mtad.station.recorder import model_sha256

        station.model_sha256 = model_sha256(model)
    app = create_app(model, class_name, image_threshold, pixel_threshold, save_dir, limits,
                     worker_thread=False, station=station)
    # One call before the first request: builds or loads the compiled scan and sizes
    # the allocator, which would otherwise make the first user wait seconds.
    log(f"mtad serve: warming up the model (one call before the first request; the first "
        f"use of the compiled CPU scan builds it, which takes minutes once)")
    started = time.perf_counter()
    model.predict(np.zeros((1, 3, model.image_size, model.image_size), np.float32))
    shown = f"[{host}]" if ":" in host else host
    log(f"mtad serve: {model_path} ({model.info.get('kind', 'model')}, "
        f"{len(model.class_names)} classes, {model.image_size} px; warmed up in "
        f"{time.perf_counter() - started:.1f} s) on http://{shown}:{port}/ "
        f"(API docs: /docs, /openapi.json)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"mtad serve: note: listening on {host}, reachable from other machines; "
            f"there is no authentication")
    # HTTP on a thread of its own, inference on this (the main) thread, where torch's
    # OpenMP threads run fastest; Ctrl-C reaches this thread and stops both.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           access_log=False, http=silent_connections_close()))
    http = threading.Thread(target=server.run, name="mtad-http", daemon=True)
    worker = app.state.worker
    watcher = threading.Thread(target=lambda: (http.join(), worker.close()), daemon=True)
    if threading.current_thread() is threading.main_thread():
        # uvicorn listens for signals only on the main thread: stop it gracefully here
        # (it then closes the worker, which ends run_forever below).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    http.start()
    watcher.start()  # the HTTP server stopped (e.g. its port was taken): stop inference too
    try:
        worker.run_forever()
    finally:
        server.should_exit = True
        http.join(10)
    if not server.started:
        raise OSError(f"could not listen on {host}:{port} (the reason is printed above)")
