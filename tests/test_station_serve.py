"""serve and predict with --log: a row committed for every answered image, 503 when it
cannot be, /health says so; SIGKILL mid-load loses no answered row; a server and
`mtad predict` write one log at once. An untrained tiny run (conftest's tiny_run: the log does
not depend on the weights) on CPU, 127.0.0.1."""
import io
import os
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from mtad.serve import create_app  # noqa: E402
from mtad.station.log import InspectionLog  # noqa: E402
from mtad.station.recorder import Station  # noqa: E402
from conftest import run_cli, start_server  # noqa: E402


def _png(seed=0, size=64):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3),
                                                         dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Brightness:
    """A stand-in for `mtad.deploy.open_model`'s models: the map is the image's brightness
    and the score its maximum (the endpoints, not the network, are under test here)."""
    image_size, class_names, info = 32, ["alpha", "beta"], {"kind": "test"}
    thresholds = {"image": 0.5, "pixel": 0.5, "source": "test", "classes": {}}

    def predict(self, images):
        amap = images.mean(1, keepdims=True)
        return amap, amap.max(axis=(1, 2, 3))


@pytest.fixture()
def model():
    return Brightness()


def test_every_answered_image_has_its_committed_row(model, tmp_path):
    log = InspectionLog(tmp_path / "inspections.db")
    # threshold -inf: every part is flagged, so its image is kept
    client = TestClient(create_app(model, image_threshold=-1e30, station=Station(
        log, station="line1", model_sha256="ab" * 32)))
    files = [("files", ("a.png", _png(1), "image/png")), ("files", ("b.png", _png(2), "image/png"))]
    results = client.post("/api/predict", files=files).json()["results"]
    rows = {r["id"]: r for r in log.query()["items"]}
    for res in results:
        row = rows[res["inspection_id"]]
        assert (row["source"], row["pred_score"], row["station"]) == (res["image_path"],
                                                                      res["pred_score"], "line1")
        assert row["verdict"] != "OK" and row["image_file"] and row["latency_ms"] > 0
    listed = client.get("/api/inspections").json()
    assert listed["total"] == 2 and listed["items"][0]["image_url"]
    assert client.get(listed["items"][0]["image_url"]).content[:4] == b"\x89PNG"
    overlay = client.get(listed["items"][0]["overlay_url"])   # heat map, outline, verdict
    assert overlay.status_code == 200 and overlay.content[:4] == b"\x89PNG"
    assert client.get("/health").json()["log"]["ok"] is True
    log.close()


def test_a_row_that_cannot_be_written_answers_503_and_health_says_the_log_fails(model, tmp_path):
    log = InspectionLog(tmp_path / "inspections.db", timeout=0.2)
    client = TestClient(create_app(model, station=Station(log)))
    blocker = sqlite3.connect(log.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")          # another writer holds the lock
    r = client.post("/api/predict", files=[("files", ("a.png", _png(), "image/png"))])
    assert r.status_code == 503 and "locked" in r.json()["detail"]
    health = client.get("/health").json()
    assert health["status"] == "log failing" and "locked" in health["log"]["detail"]
    blocker.execute("ROLLBACK")
    blocker.close()
    assert client.post("/api/predict", files=[("files", ("a.png", _png(), "image/png"))]
                       ).status_code == 200
    assert client.get("/health").json()["status"] == "ok"
    assert log.query()["total"] == 1
    log.close()


def _start_server(run, db, tmp_path):
    return start_server(run, tmp_path / "serve.log", "--log", db, "--keep", "all")


@pytest.fixture(scope="module")
def log_server(tiny_run, tmp_path_factory):
    """One `mtad serve --log --keep all` for the two tests below (in this order: the
    second kills it)."""
    folder = tmp_path_factory.mktemp("log-server")
    db = folder / "inspections.db"
    proc, base = _start_server(tiny_run, db, folder)
    yield proc, base, db
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_server_and_predict_write_one_log_at_once(log_server, tiny_run, data_root, tmp_path):
    proc, base, db = log_server
    with InspectionLog(db, readonly=True) as log:
        before = log.query()["total"]
    posted = []

    def client():
        with httpx.Client(timeout=30) as c:
            for i in range(15):
                r = c.post(f"{base}/api/predict",
                           files=[("files", (f"s{i}.png", _png(i), "image/png"))])
                assert r.status_code == 200
                posted.append(r.json()["results"][0]["inspection_id"])

    t = threading.Thread(target=client)
    t.start()
    images = data_root / "alpha" / "test"
    r = run_cli("predict", "--checkpoint", str(tiny_run), str(images), "--out",
                str(tmp_path / "found"), "--log", str(db), "--station", "bench",
                "--device", "cpu", timeout=300)
    t.join(timeout=120)
    assert r.returncode == 0, r.stderr
    n_files = len(list(images.rglob("*.png")))
    with InspectionLog(db, readonly=True) as log:
        rows = log.query(limit=1000)["items"]
    assert len(rows) == before + 15 + n_files and len(posted) == 15
    assert sum(r["station"] == "bench" for r in rows) == n_files
    assert set(posted) <= {r["id"] for r in rows}
    predicted = [r for r in rows if r["station"] == "bench"]
    assert all(r["model_sha256"] and len(r["model_sha256"]) == 64 for r in predicted)


@pytest.mark.slow
def test_sigkill_during_load_leaves_a_sound_log_with_every_answered_row(log_server):
    proc, base, db = log_server
    answered, stop = [], threading.Event()
    body = _png(3)

    def client():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{base}/api/predict", files=[("files", ("p.png", body, "image/png"))])
                except httpx.HTTPError:
                    return                       # the server is gone
                if r.status_code == 200:
                    answered.append(r.json()["results"][0]["inspection_id"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(answered) < 12 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)            # while the clients are being answered
    proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(answered) >= 12
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = {r[0] for r in con.execute("SELECT id FROM inspections")}
    con.close()
    assert set(answered) <= ids                  # every 200 has its row
