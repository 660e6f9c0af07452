"""The station's endpoints (mtad/serve/station.py) on an app without a model: inspections
with filters and image URLs, the review mark, counts, the monitor, /health's log entry."""
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from mtad.serve.station import add_routes  # noqa: E402
from mtad.station.recorder import Station  # noqa: E402
from mtad.station.log import InspectionLog  # noqa: E402


class _Levels:       # the attributes of mtad.calibration.Levels the monitor reads
    def __init__(self, scores, image):
        self.scores, self.image, self.rule, self.provenance = tuple(scores), image, ">", {}


class _Thresholds:
    def __init__(self, classes):
        self.classes, self.pooled = classes, None


@pytest.fixture()
def station(tmp_path):
    log = InspectionLog(tmp_path / "inspections.db")
    yield Station(log, station="line1", model_sha256="ab" * 32, drift_window=50)
    log.close()


def _client(station, thresholds=None):
    app = FastAPI()
    add_routes(app, station, lambda: thresholds)
    return TestClient(app)


def _log(station, n, verdict="OK", cls="alpha", score=0.1):
    rgb = np.full((8, 8, 3), 200, np.uint8)
    return [station.record(f"{i}.png", cls, score, verdict, 1, 3.0, b"raw bytes", lambda: rgb)
            for i in range(n)]


def test_inspections_list_filter_and_link_kept_images(station):
    _log(station, 3)
    ng = _log(station, 1, "NG", "beta", 0.9)[0]
    client = _client(station)
    body = client.get("/api/inspections").json()
    assert body["total"] == 4 and body["items"][0]["id"] == ng["id"]
    assert body["items"][0]["station"] == "line1" and body["items"][0]["thresholds_version"] == 1
    assert body["items"][0]["image_url"] == f"/api/inspections/{ng['id']}/image"
    assert "image_url" not in body["items"][1]               # OK parts: no image kept
    png = client.get(body["items"][0]["image_url"])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get(f"/api/inspections/{body['items'][1]['id']}/image").status_code == 404
    only = client.get("/api/inspections", params={"class_name": "alpha", "limit": 2}).json()
    assert only["total"] == 3 and len(only["items"]) == 2
    bad = client.get("/api/inspections", params={"verdict": "MAYBE"})
    assert bad.status_code == 422 and "verdict" in bad.json()["detail"]
    assert client.get("/api/inspections/counts").json()["counts"]["beta"]["NG"] == 1


def test_review_marks_a_part_and_takes_it_out_of_the_queue(station):
    part = _log(station, 1, "REVIEW", score=0.5)[0]
    client = _client(station)
    queue = {"verdict": "REVIEW,NG", "review": "none"}
    assert client.get("/api/inspections", params=queue).json()["total"] == 1
    r = client.post(f"/api/inspections/{part['id']}/review", json={"review": "good",
                                                                   "note": "glare"})
    assert r.status_code == 200 and r.json()["review"] == "good" and r.json()["review_time"]
    assert client.get("/api/inspections", params=queue).json()["total"] == 0
    assert client.post(f"/api/inspections/{part['id']}/review",
                       json={"review": "bad"}).status_code == 422
    assert client.post("/api/inspections/999/review", json={"review": "good"}).status_code == 404


def test_monitor_answers_per_class_and_flags_a_shifted_class(station):
    rng = np.random.default_rng(3)
    calib = rng.normal(0.2, 0.02, 300)
    threshold = float(np.sort(calib)[-3])
    thresholds = _Thresholds({"alpha": _Levels(calib, threshold), "beta": _Levels(calib, threshold)})
    for s in rng.normal(0.2, 0.02, 60):
        station.record("a.png", "alpha", s, "OK", 1, 1.0, b"x", lambda: None)
    for s in rng.normal(0.26, 0.02, 60):      # beta's line changed
        station.record("b.png", "beta", s, "REVIEW" if s > threshold else "OK", 1, 1.0, b"x",
                       lambda: np.zeros((4, 4, 3), np.uint8))
    body = _client(station, thresholds).get("/api/monitor").json()
    rows = {c["class_name"]: c for c in body["classes"]}
    assert rows["alpha"]["drift"] is False and rows["beta"]["drift"] is True
    assert rows["beta"]["window"] == 50 and rows["beta"]["n"] == 50
    assert body["alarm_rate"] == 0.01
    # legacy thresholds (no calibration scores): nothing to test, said with None
    legacy = _client(station, {"image": 0.3}).get("/api/monitor").json()
    assert all(c["drift"] is None for c in legacy["classes"])


def test_health_entry_says_when_the_log_fails(station, tmp_path):
    import sqlite3

    assert station.health()["log"]["ok"] is True
    station.log.timeout = 0.1
    station.log._db.execute("PRAGMA busy_timeout=100")
    blocker = sqlite3.connect(station.log.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(Exception, match="locked"):
        _log(station, 1)
    entry = station.health()["log"]
    assert entry["ok"] is False and "locked" in entry["detail"]
    blocker.execute("ROLLBACK")
    blocker.close()
