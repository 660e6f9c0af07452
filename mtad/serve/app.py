"""`mtad serve`: the inspection page and the REST API (FastAPI), one model loaded once.

Endpoints:
    GET  /              the inspection page (static HTML/CSS/JS from this package)
    POST /api/predict   multipart: ``files`` (repeated), optional ``class_name`` (or
                        its old name ``class``)
    GET  /api/model     metadata, classes, thresholds (with sources), metrics, loss curve
    GET  /health        {"status": "ok", "in_flight", "capacity", "served"}; with a log
                        also "log": {"path", "ok", "detail"} ("status": "log failing")
    /api/inspections..., /api/monitor   with --log (`mtad.serve.station`)
    GET  /docs          OpenAPI page (offline when fastapi-offline is installed),
                        /openapi.json always

POST /api/predict answers, per file in request order::

    {"image_path": "part.png", "status": 200, "pred_score": 3.1, "pred_label": true,
     "verdict": "OK" | "REVIEW" | "NG",              # pred_label: verdict is not OK
     "class_name": "brick" | null, "class": (the same; its old name, sent for one
     more release), "image_threshold": .., "ng_threshold": .. | null,
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
import time
import types
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from mtad.postprocess import ThresholdError
from mtad.report.drawing import BANNER_ALPHA, DEFECTIVE_RGB, OK_RGB, OUTLINE_RGB, REVIEW_RGB, ramp_lut
from mtad.serve.modelinfo import model_info
from mtad.serve.predictor import Predictor
from mtad.serve.uploads import FormReader, Limits, UploadError, human_bytes
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
            "class_name": {"type": "string", "description": "product class whose calibrated "
                           "thresholds apply (default: the server's --class, else pooled; "
                           "empty: pooled)"},
            "class": {"type": "string", "deprecated": True,
                      "description": "the old name of class_name (read for one more release)"}}}}}},
    "responses": {"408": {"description": "the upload stalled (no data for 10 s)"},
                  "413": {"description": "a file or the request is too large"},
                  "415": {"description": "not a decodable image (single file)"},
                  "422": {"description": "unknown class"},
                  "503": {"description": "queue full; see Retry-After"}},
}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def create_app(model, class_name: str | None = None, image_threshold: float | None = None,
               pixel_threshold: float | None = None, save_dir: str | Path | None = None,
               limits: Limits | None = None, worker_thread: bool = True,
               station=None) -> FastAPI:
    """The FastAPI app serving ``model`` (an `mtad.deploy.Inferencer`): the routes, over
    a `mtad.serve.predictor.Predictor` (``app.state.predictor``) and an inference worker
    (``app.state.worker``).

    With ``worker_thread=False`` the worker starts no thread: the caller runs
    ``app.state.worker.run_forever()`` (as `mtad.serve.server.serve` does).

    Args:
        model: loaded once (e.g. ``mtad.deploy.open_model(path)``) and kept.
        class_name, image_threshold, pixel_threshold, save_dir, station: see `Predictor`
            (``station``: --log; a failed write answers 503 with the reason).
        limits: sizes, queue and batch (`mtad.serve.uploads.Limits`).

    Raises:
        ThresholdError: ``class_name`` unknown, or no image threshold at all (the
            run was never evaluated and none is given).
    """
    limits = limits or Limits()
    predictor = Predictor(model, class_name, image_threshold, pixel_threshold, save_dir,
                          station, limits.max_pixels, limits.max_request_pixels)
    worker = InferenceWorker(model, limits.queue, limits.max_batch, thread=worker_thread)
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
    app.state.worker, app.state.predictor = worker, predictor
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

    _add_docs(app)
    # bytes of the bodies being received (not yet queued), all requests together
    receiving = types.SimpleNamespace(bytes=0, budget=(limits.queue + 1) * limits.max_request_bytes)

    @app.post("/api/predict", summary="score images; per file a verdict and an anomaly map",
              openapi_extra=PREDICT_BODY)
    async def api_predict(request: Request):
        started = time.perf_counter()
        try:
            form = await read_form(request, limits, receiving)
            if not form.files:
                raise UploadError(422, "no image: send one or more files in the form "
                                       "field 'files'")
            try:   # class_name, or its old name class; "" asks for the pooled thresholds
                chosen, choice = predictor.choose(form.fields.get("class_name",
                                                                  form.fields.get("class")))
            except ThresholdError as exc:
                raise UploadError(422, str(exc)) from None
        except UploadError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except ClientDisconnect:
            return Response(status_code=400)      # nobody listens; nothing was kept
        if not worker.admit():
            wait = worker.retry_after()
            return _error(503, f"busy: {worker.capacity} requests are already being served or "
                               f"queued; retry in {wait} s", {"Retry-After": str(wait)})
        try:
            uploads = form.files
            prepared = await run_in_threadpool(predictor.prepare, uploads,
                                               request.client.host if request.client else None)
            good = [p[1] for p in prepared if p is not None]
            computed = None
            if good:
                try:
                    computed = await asyncio.wrap_future(worker.submit(np.stack(good)))
                except Exception as exc:  # e.g. out of GPU memory: this request fails, not the server
                    return _error(500, f"inference failed: {type(exc).__name__}: {exc}")
            try:
                results = await run_in_threadpool(predictor.answer, uploads, prepared, computed,
                                                  choice, chosen, started)
            except LogWriteError as exc:   # no answer without its row
                return _error(503, str(exc))
            body = {"results": results, "class_name": chosen, "class": chosen,  # "class": one release
                    "image_size": predictor.size,
                    "elapsed_ms": round(1000 * (time.perf_counter() - started), 2)}
            status = 200
            if len(results) == 1 and results[0]["status"] != 200:
                status = results[0]["status"]
                body["detail"] = results[0]["detail"]
            return JSONResponse(body, status_code=status)
        finally:
            worker.release()

    return app


async def read_form(request: Request, limits: Limits, receiving):
    """The request's multipart form (`mtad.serve.uploads.FormReader`), read whole before
    the request asks for a place in the model's queue, so a slow or stalled client holds
    no place: it holds its bytes (from ``receiving``'s budget, shared by all uploads being
    received) until it sends the rest or falls silent for UPLOAD_IDLE_S.

    Raises:
        UploadError: 413 (declared or read body over the limits), 408 (stalled, or not
            complete after UPLOAD_TIMEOUT_S), 503 with Retry-After (the budget is spent),
            or the form's own errors.
        ClientDisconnect: the client went away.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise UploadError(413, f"request body of {human_bytes(int(declared))} is larger than "
                               f"the {human_bytes(limits.max_request_bytes)} limit per request")
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
                    raise UploadError(408, f"upload not complete after {UPLOAD_TIMEOUT_S:.0f} s") \
                        from None
                raise UploadError(408, f"upload stalled: no data for {UPLOAD_IDLE_S:.0f} s") \
                    from None
            if receiving.bytes + len(chunk) > receiving.budget:
                raise UploadError(503, "busy: other uploads are being received; retry in "
                                       f"{UPLOAD_IDLE_S:.0f} s",
                                  {"Retry-After": str(int(UPLOAD_IDLE_S))})
            receiving.bytes += len(chunk)
            held += len(chunk)
            reader.feed(chunk)
        return reader.close()
    finally:
        receiving.bytes -= held


def _add_docs(app: FastAPI) -> None:
    """GET /docs: the OpenAPI page, offline when fastapi-offline is installed."""
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

