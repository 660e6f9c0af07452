"""What `GET /api/model` says about the served model, and the training-loss curve.

The loss curve is the run's per-step training loss (``info["train_loss"]``).
"""
from __future__ import annotations

from mtad.postprocess import ThresholdError, select_thresholds

MAX_POINTS = 400


def _downsample(points: list[tuple[float, float]], n: int = MAX_POINTS) -> list[list[float]]:
    """At most ``n`` points: the mean step and mean loss of equal runs of points."""
    points = sorted(points)
    if len(points) <= n:
        return [[float(s), float(v)] for s, v in points]
    out = []
    for i in range(n):
        chunk = points[i * len(points) // n:(i + 1) * len(points) // n]
        out.append([sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk)])
    return out


def loss_curve(info: dict) -> dict | None:
    """{"points": [[step, loss], ...], "x": "step", "source": ...} or None, from the
    model's ``info["train_loss"]`` ([step, loss] per training step: a run's
    checkpoint holds it, and an export's metadata carries it)."""
    given = info.get("train_loss")
    if not given:
        return None
    pts = [(p[0], p[1]) for p in given]
    return {"points": _downsample(pts), "x": "step", "source": f"{info.get('kind', 'run')} (train_loss)"}


def thresholds_table(model, image: float | None, pixel: float | None) -> dict:
    """Pooled and per-class threshold choices (values and sources), or the reason
    a class has none."""

    def choice(name):
        try:
            return select_thresholds(model.thresholds, name, image, pixel,
                                     model.class_names).as_dict()
        except ThresholdError as exc:
            return {"error": str(exc)}

    return {"pooled": choice(None), "classes": {c: choice(c) for c in model.class_names}}


def model_info(model, default_class: str | None, image: float | None, pixel: float | None,
               limits: dict, drawing: dict) -> dict:
    """The body of GET /api/model (see `mtad.serve.app`)."""
    info = dict(model.info or {})
    from mtad.calibration import Thresholds

    saved = Thresholds.coerce(model.thresholds)
    return {
        "kind": info.get("kind"), "source": str(info.get("source", "")),
        "epoch": info.get("epoch"), "image_size": int(model.image_size),
        "class_names": list(model.class_names), "default_class": default_class,
        "thresholds": thresholds_table(model, image, pixel),
        "calibration": {"source": saved.source, "epoch": saved.epoch,
                        "method": saved.method, "version": saved.version,
                        "created": saved.created, "missing": saved.missing},
        "metrics": info.get("results"), "history": info.get("history") or [],
        "loss": loss_curve(info), "limits": limits, "drawing": drawing,
        "export": ({k: info.get(k) for k in ("format", "precision", "runtime", "quantization",
                                             "accuracy_check", "parity")}
                   if info.get("kind") == "export" else None),
    }
