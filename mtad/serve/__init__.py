"""`mtad serve`: an inspection web page and a REST API for a trained model.

    mtad serve RUN_OR_EXPORT [--host 127.0.0.1] [--port 8000] [--class NAME] [--save DIR]

app.py holds the HTTP layer: the endpoints (documented there) and the reading of
request bodies; predictor.py the model, its thresholds and the decisions (no
HTTP); server.py the process lifecycle (start, warm-up, the inference worker on
the main thread, shutdown); uploads.py the in-memory multipart reading and safe
image decoding with their limits, worker.py the one inference thread behind a
bounded queue, modelinfo.py what GET /api/model says, static/ the page (plain
HTML/CSS/JS, no build step, no CDN).
Needs the ``serve`` extra: fastapi, uvicorn, python-multipart (fastapi-offline
for an offline /docs page).
"""
from mtad.serve.uploads import Limits

__all__ = ["Limits", "create_app", "serve"]


def __getattr__(name):
    if name == "create_app":
        from mtad.serve.app import create_app

        return create_app
    if name == "serve":
        from mtad.serve.server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
