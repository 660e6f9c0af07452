"""`mtad serve --log DB`: every answered inspection logged, the review queue, the drift monitor.

Endpoints added to the app (`add_routes`):
    GET  /api/inspections              ?class_name=&verdict=&since=&until=&limit=&offset=
                                       &review= -> {"total", "items": [row + "image_url"]}
    GET  /api/inspections/counts       {"counts": {class_name or "": {verdict: n}}}
    GET  /api/inspections/{id}/image   the kept PNG (404 when none was kept)
    GET  /api/inspections/{id}/overlay its overlay (heat map, outline, verdict), when kept
    POST /api/inspections/{id}/review  {"review": "good" | "defect", "note": "..."}
    GET  /api/monitor                  `mtad.station.drift.monitor`'s answer

Rows come from `mtad.station.recorder.Station.record`, called for every image answered with 200 before
the answer leaves (`mtad.serve.app`); a write that fails raises
`mtad.station.log.LogWriteError` and the request answers 503 with the reason.
"""
from __future__ import annotations

from mtad.station import drift
from mtad.station.log import LogError, LogWriteError, overlay_file
from mtad.station.recorder import Station, references_of


def public_row(row: dict, images=None) -> dict:
    """A row as the API shows it: the log's columns, with ``image_url`` when kept (and
    ``overlay_url`` when its overlay is, in the folder ``images``)."""
    out = dict(row)
    if row.get("image_file"):
        out["image_url"] = f"/api/inspections/{row['id']}/image"
        if images is not None and (images / overlay_file(row["image_file"])).is_file():
            out["overlay_url"] = f"/api/inspections/{row['id']}/overlay"
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
        return {"total": result["total"],
                "items": [public_row(r, log.images) for r in result["items"]]}

    @app.get("/api/inspections/counts", summary="inspections per class and verdict")
    def counts():
        return {"counts": log.counts()}

    def kept(inspection_id: int, which: str):
        try:
            row = log.get(inspection_id)
        except KeyError as exc:
            return error(404, str(exc.args[0]))
        name = row["image_file"] and (row["image_file"] if which == "image"
                                      else overlay_file(row["image_file"]))
        path = log.images / (name or "")
        if not name or not path.is_file() or path.parent != log.images:
            return error(404, f"inspection {inspection_id} has no kept {which}")
        return FileResponse(path, media_type="image/png")

    @app.get("/api/inspections/{inspection_id}/image", summary="the kept image of a part")
    def image(inspection_id: int):
        return kept(inspection_id, "image")

    @app.get("/api/inspections/{inspection_id}/overlay", summary="the kept overlay of a part")
    def overlay(inspection_id: int):
        return kept(inspection_id, "overlay")

    @app.post("/api/inspections/{inspection_id}/review",
              summary="an operator's mark: good or defect, with an optional note")
    def review(inspection_id: int, body: dict = Body(..., examples=[
            {"review": "good", "note": "reflection, not a scratch"}])):
        try:
            return public_row(log.review(inspection_id, body.get("review"), body.get("note")),
                              log.images)
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
