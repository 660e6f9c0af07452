"""The `mtad serve` process: start, warm-up, the inference worker, shutdown.

``serve`` checks the port and the --log file before the model loads (each a
one-line error), loads the model once, builds the app (`mtad.serve.app`), warms
the model up with one call, then runs HTTP (uvicorn) on a thread of its own and
inference on the main thread, where torch's OpenMP threads run fastest, until
Ctrl-C / SIGTERM or the HTTP server stops.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np

from mtad.serve.uploads import Limits


def check_port(host: str, port: int) -> None:
    """Raises ValueError for a port outside 1-65535, OSError (one line) when it cannot
    be listened on (taken, or a host not of this machine)."""
    if not 0 < int(port) < 65536:
        raise ValueError(f"--port: {port} is not a TCP port; allowed: 1-65535")
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(f"cannot listen on {host}:{port}: {reason}") from None


def warm_up(model) -> float:
    """One call before the first request (builds or loads the compiled scan and sizes
    the allocator, which would otherwise make the first user wait seconds); seconds taken."""
    started = time.perf_counter()
    model.predict(np.zeros((1, 3, model.image_size, model.image_size), np.float32))
    return time.perf_counter() - started


def run(app, host: str, port: int) -> None:
    """Serve ``app`` until interrupted: HTTP on a thread of its own, ``app.state.worker``
    on this thread; Ctrl-C / SIGTERM (on the main thread) stops both, and so does the
    HTTP server stopping. Raises OSError when uvicorn could not listen."""
    import uvicorn

    from mtad.serve.app import silent_connections_close

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
    from mtad.deploy import open_model
    from mtad.serve.app import create_app

    check_port(host, port)   # a taken port is a one-line error before the model loads
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
    log("mtad serve: warming up the model (one call before the first request; the first "
        "use of the compiled CPU scan builds it, which takes minutes once)")
    seconds = warm_up(model)
    shown = f"[{host}]" if ":" in host else host
    log(f"mtad serve: {model_path} ({model.info.get('kind', 'model')}, "
        f"{len(model.class_names)} classes, {model.image_size} px; warmed up in "
        f"{seconds:.1f} s) on http://{shown}:{port}/ (API docs: /docs, /openapi.json)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"mtad serve: note: listening on {host}, reachable from other machines; "
            f"there is no authentication")
    run(app, host, port)
