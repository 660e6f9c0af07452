"""`mtad serve`: an inspection web page and a REST API for a trained model.

    mtad serve RUN_OR_EXPORT [--host 127.0.0.1] [--port 8000] [--class NAME] [--save DIR]

app.py holds the endpoints (documented there), uploads.py the in-memory
multipart reading and safe image decoding with their limits, worker.py the one
inference thread behind a bounded queue, modelinfo.py what GET /api/model
says, static/ the page (plain HTML/CSS/JS, no build step, no CDN).
Needs the ``serve`` extra: fastapi, uvicorn, python-multipart (fastapi-offline
for an offline /docs page).
"""
from mtad.serve.uploads import Limits

__all__ = ["Limits", "create_app", "serve"]


def __getattr__(name):
    if name in ("create_app", "serve"):
        from mtad.serve import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
