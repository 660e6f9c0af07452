"""What serve and predict share to log inspections: the open log, the fields every row
shares, and the drift references of a model's thresholds (no web framework, no torch)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from mtad.station import drift
from mtad.station.log import InspectionLog


def model_sha256(model) -> str | None:
    """The checkpoint SHA-256 of a model from `mtad.deploy.open_model` (an export's
    metadata records it; a run's checkpoint is hashed), None when unknown."""
    return getattr(model, "checkpoint_sha256", None)


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
               thresholds_version, latency_ms: float, data: bytes, decode, draw=None) -> dict:
        """Commit one inspection; ``decode()`` gives the upright RGB photo and
        ``draw(photo)`` its overlay, called only when the keep policy keeps this
        verdict's image. Raises LogWriteError."""
        from mtad.report.cells import printable   # a non-UTF-8 file name as \xNN text

        image = decode() if self.log.keeps(verdict) else None
        overlay = draw(image) if image is not None and draw is not None else None
        return self.log.record(source=printable(source), class_name=class_name,
                               pred_score=pred_score, verdict=verdict, station=self.station,
                               thresholds_version=thresholds_version,
                               model_sha256=self.model_sha256, latency_ms=latency_ms,
                               image_sha256=hashlib.sha256(data).hexdigest(), image=image,
                               overlay=overlay)

    def health(self) -> dict:
        """/health's log entry: {"log": {"path", "ok", "detail"}} (detail: why it fails)."""
        problem = self.log.check()
        return {"log": {"path": str(self.log.path), "ok": problem is None, "detail": problem}}


def open_station(db: str | Path, keep: str = "flagged", keep_days: float | None = None,
                 station: str | None = None, model_sha256: str | None = None,
                 drift_window: int = drift.DEFAULT_WINDOW) -> Station:
    """Open (or create) the log for serve; raises LogError at start for a bad file."""
    return Station(InspectionLog(db, keep=keep, keep_days=keep_days), station, model_sha256,
                   drift_window)
