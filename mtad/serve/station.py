"""`mtad serve --log DB`: every answered inspection logged, the review queue, the drift monitor.

Endpoints added to the app (`add_routes`):
    GET  /api/inspections              ?class_name=&verdict=&since=&until=&limit=&offset=
                                       &review= -> {"total", "items": [row + "image_url"]}
    GET  /api/inspections/counts       {"counts": {class_name or "": {verdict: n}}}
    GET  /api/inspections/{id}/image   the kept PNG (404 when none was kept)
    POST /api/inspections/{id}/review  {"review": "good" | "defect", "note": "..."}
    GET  /api/monitor                  `mtad.station.drift.monitor`'s answer

Rows come from `Station.record`, called for every image answered with 200 before
the answer leaves (`mtad.serve.app`); a write that fails raises
`mtad.station.log.LogWriteError` and the request answers 503 with the reason.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from mtad.station import drift
from mtad.station.log import InspectionLog, LogError, LogWriteError

ROW_FIELDS_HIDDEN = ("image_file",)


def references_of(thresholds) -> dict:
    """{class_name: drift.Reference} of a model's thresholds (the pooled levels under
    None). Only a calibration that keeps its good-part scores (`mtad calibrate`)
    has them; legacy thresholds give {} and the monitor reports nothing to test."""
    refs = {}
    for name, levels in (getattr(thresholds, "classes", None) or {}).items():
        refs[name] = drift.reference_of(levels)
    pooled = getattr(thresholds, "pooled", None)
    if pooled is not None:
        refs[None] = drift.reference_of(pooled)
    return refs


class Station:
    """What serve needs to log inspections: the open log and the fields every row shares.

    Args:
        log: the open `InspectionLog`.
        station: the --station name (None: not recorded).
        model_sha256: the model's checkpoint SHA-256 (None: unknown).
        drift_window: parts per class the monitor looks at.
        alarm_rate: the monitor's false-alarm rate per check.
    """

    def __init__(self, log: InspectionLog, station: str | None = None,
                 model_sha256: str | None = None, drift_window: int = drift.DEFAULT_WINDOW,
                 alarm_rate: float = drift.DEFAULT_ALARM_RATE):
        self.log, self.station, self.model_sha256 = log, station, model_sha256
        self.drift_window, self.alarm_rate = int(drift_window), float(alarm_rate)

    @property
    def keeps_images(self) -> bool:
        return self.log.keep != "none"

    def record(self, source: str, class_name: str | None, pred_score: float, verdict: str,
               thresholds_version, latency_ms: float, data: bytes, decode) -> dict:
        """Commit one inspection; ``decode()`` gives the upright RGB photo, called only
        when the keep policy keeps this verdict's image. Raises LogWriteError."""
        image = decode() if self.log.keeps(verdict) else None
        return self.log.record(source=source, class_name=class_name, pred_score=pred_score,
                               verdict=verdict, station=self.station,
                               thresholds_version=thresholds_version,
                               model_sha256=self.model_sha256, latency_ms=latency_ms,
                               image_sha256=hashlib.sha256(data).hexdigest(), image=image)

    def health(self) -> dict:
        """/health's log entry: {"log": {"path", "ok", "detail"}} (detail: why it fails)."""
        problem = self.log.check()
        return {"log": {"path": str(self.log.path), "ok": problem is None, "detail": problem}}


def public_row(row: dict) -> dict:
    """A row as the API shows it: the log's columns, with ``image_url`` when kept."""
    out = dict(row)
    if row.get("image_file"):
        out["image_url"] = f"/api/inspections/{row['id']}/image"
    return out


def add_routes(app, station: Station, thresholds_of) -> None:
    """Add the station's endpoints (module docstring) to a FastAPI ``app``;
    ``thresholds_of()`` gives the model's active thresholds (for the monitor)."""
    from fastapi import Body
    from fastapi.responses import FileResponse, JSONResponse

    log = station.log

    def error(status: int, message: str):
        return JSONResponse({"detail": message}, status_code=status)

    @app.get("/api/inspections", summary="logged inspections, newest first, with filters")
    def inspections(class_name: str | None = None, verdict: str | None = None,
                    since: str | None = None, until: str | None = None, limit: int = 100,
                    offset: int = 0, review: str | None = None):
        try:
            result = log.query(class_name=class_name or None, verdict=verdict, since=since,
                               until=until, limit=limit, offset=offset, review=review or None)
        except LogError as exc:
            return error(422, str(exc))
        return {"total": result["total"], "items": [public_row(r) for r in result["items"]]}

    @app.get("/api/inspections/counts", summary="inspections per class and verdict")
    def counts():
        return {"counts": log.counts()}

    @app.get("/api/inspections/{inspection_id}/image", summary="the kept image of a part")
    def image(inspection_id: int):
        try:
            row = log.get(inspection_id)
        except KeyError as exc:
            return error(404, str(exc.args[0]))
        path = log.images / (row["image_file"] or "")
        if not row["image_file"] or not path.is_file() or path.parent != log.images:
            return error(404, f"inspection {inspection_id} has no kept image")
        return FileResponse(path, media_type="image/png")

    @app.post("/api/inspections/{inspection_id}/review",
              summary="an operator's mark: good or defect, with an optional note")
    def review(inspection_id: int, body: dict = Body(..., examples=[
            {"review": "good", "note": "reflection, not a scratch"}])):
        try:
            return public_row(log.review(inspection_id, body.get("review"), body.get("note")))
        except KeyError as exc:
            return error(404, str(exc.args[0]))
        except LogWriteError as exc:
            return error(503, str(exc))
        except LogError as exc:
            return error(422, str(exc))

    @app.get("/api/monitor", summary="drift per class: recent scores against the calibration")
    def monitor():
        return drift.monitor_log(log, references_of(thresholds_of()), station.drift_window,
                                 station.alarm_rate)


def open_station(db: str | Path, keep: str = "flagged", keep_days: float | None = None,
                 station: str | None = None, model_sha256: str | None = None,
                 drift_window: int = drift.DEFAULT_WINDOW) -> Station:
    """Open (or create) the log for serve; raises LogError at start for a bad file."""
    return Station(InspectionLog(db, keep=keep, keep_days=keep_days), station, model_sha256,
                   drift_window)
