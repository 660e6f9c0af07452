"""What `GET /api/model` says about the served model, and the training-loss curve.

The loss curve comes from the first of: the model's ``info["loss"]`` (a list of
[step, loss] pairs or {"step", "loss"} dicts, as an export's metadata may carry
it), per-evaluation ``loss``/``train_loss`` entries of ``info["history"]``, or
the ``train/loss`` scalars of the run folder's TensorBoard log (read here with
tensorboard's protobuf classes, no TensorFlow).
"""
from __future__ import annotations

import struct
from pathlib import Path

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


def _tensorboard_scalars(folder: Path, tag: str) -> list[tuple[float, float]]:
    """(step, value) of one scalar tag from the event files in ``folder``."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event
    except ImportError:
        return []
    points = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data = file.read_bytes()
        at = 0
        while at + 12 <= len(data):   # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack_from("<Q", data, at)
            payload = data[at + 12:at + 12 + length]
            at += 12 + length + 4
            if len(payload) < length:
                break               # a file still being written
            try:
                event = Event.FromString(payload)
            except Exception:
                continue
            for value in event.summary.value:
                if value.tag != tag:
                    continue
                if value.HasField("simple_value"):
                    points.append((event.step, value.simple_value))
                elif value.HasField("tensor") and value.tensor.float_val:
                    points.append((event.step, value.tensor.float_val[0]))
    return points


def loss_curve(info: dict) -> dict | None:
    """{"points": [[step, loss], ...], "x": "step"|"epoch", "source": ...} or None."""
    given = info.get("loss")
    if given:
        pts = [(p["step"], p["loss"]) if isinstance(p, dict) else (p[0], p[1]) for p in given]
        return {"points": _downsample(pts), "x": "step", "source": "model metadata"}
    history = info.get("history") or []
    for key in ("train_loss", "loss"):
        pts = [(h["epoch"], h[key]) for h in history if isinstance(h, dict) and key in h]
        if pts:
            return {"points": _downsample(pts), "x": "epoch", "source": f"history ({key})"}
    if info.get("kind") == "checkpoint" and info.get("source"):
        folder = Path(info["source"]).parent / "tensorboard"
        if folder.is_dir():
            pts = _tensorboard_scalars(folder, "train/loss")
            if pts:
                return {"points": _downsample(pts), "x": "step",
                        "source": "run's TensorBoard log (train/loss)"}
    return None


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
    saved = model.thresholds or {}
    return {
        "kind": info.get("kind"), "source": str(info.get("source", "")),
        "epoch": info.get("epoch"), "image_size": int(model.image_size),
        "class_names": list(model.class_names), "default_class": default_class,
        "thresholds": thresholds_table(model, image, pixel),
        "calibration": {"source": saved.get("source"), "epoch": saved.get("epoch"),
                        "missing": saved.get("missing", {})},
        "metrics": info.get("results"), "history": info.get("history") or [],
        "loss": loss_curve(info), "limits": limits, "drawing": drawing,
    }
