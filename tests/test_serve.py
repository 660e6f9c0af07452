"""`mtad serve`: the REST API answers what direct prediction computes, and every bad
input gets its status and a message that names the problem. A tiny trained run
(64 px, depths 1, one epoch) on CPU."""
import base64
import io
import socket
import struct
import tempfile
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from mtad.data import read_rgb, resize_rgb  # noqa: E402
from mtad.deploy import open_model  # noqa: E402
from mtad.postprocess import select_thresholds  # noqa: E402
from mtad.serve import Limits, create_app  # noqa: E402
from conftest import free_port, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def tiny(data_root, trained_run):
    return data_root, trained_run


@pytest.fixture(scope="module")
def model(tiny):
    return open_model(tiny[1], "cpu")


@pytest.fixture(scope="module")
def client(model):
    return TestClient(create_app(model))


def png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height zeros: tiny file, huge image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def decode_map(entry) -> np.ndarray:
    q = np.asarray(Image.open(io.BytesIO(base64.b64decode(entry["data"]))), dtype=np.float64)
    return entry["min"] + q / 255.0 * (entry["max"] - entry["min"])


def files(*items):
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


class Gated:
    """The real model, held at a gate: lets a test fill the queue on purpose."""

    def __init__(self, model, fail_once=False):
        self.model, self.fail_once = model, fail_once
        self.image_size, self.class_names = model.image_size, model.class_names
        self.thresholds, self.info = model.thresholds, model.info
        self.gate, self.entered = threading.Event(), threading.Event()

    def predict(self, images):
        self.entered.set()
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("simulated out of memory")
        assert self.gate.wait(60)
        return self.model.predict(images)


def test_predictions_equal_direct_prediction_of_the_same_images(tiny, model, client, tmp_path):
    data, _ = tiny
    defective = data / "alpha/test/square/000.png"
    good = data / "beta/test/good/001.png"
    # A non-square JPEG: decoded, resized to the model's input and mapped back as predict does.
    Image.open(data / "beta/test/square/002.png").resize((96, 80)).save(tmp_path / "odd.jpg",
                                                                         quality=95)
    paths = [defective, good, tmp_path / "odd.jpg"]
    answer = client.post("/api/predict", files=files(*[(p.name, p.read_bytes()) for p in paths]))
    assert answer.status_code == 200
    results = answer.json()["results"]

    rgbs = [read_rgb(p) for p in paths]
    x = np.stack([resize_rgb(rgb, model.image_size).transpose(2, 0, 1) / np.float32(255)
                  for rgb in rgbs]).astype(np.float32)
    maps, scores = model.predict(x)
    choice = select_thresholds(model.thresholds, None, class_names=model.class_names)
    for rgb, r, amap, score, path in zip(rgbs, results, maps, scores, paths):
        assert r["image_path"] == path.name and r["status"] == 200
        assert (r["height"], r["width"]) == rgb.shape[:2]
        # one model on one machine; the server batches requests its own way: float32 rounding
        # that depends on the batch (~1e-7), 1e-5 leaves a margin of 100
        assert r["pred_score"] == pytest.approx(float(score), rel=1e-5)
        assert r["pred_label"] == bool(score >= choice.image)
        assert r["verdict"] == ("NG" if score >= choice.image else "OK")   # F1: one level
        assert r["image_threshold"] == choice.image and r["pixel_threshold"] == choice.pixel
        assert r["image_threshold_source"] == choice.image_source == "pooled (test split, epoch 2)"
        sent = decode_map(r["anomaly_map"])
        assert sent.shape == amap[0].shape == (model.image_size, model.image_size)
        step = (r["anomaly_map"]["max"] - r["anomaly_map"]["min"]) / 255
        # 8-bit quantisation, and the batch's float32 rounding (~1e-7 of maps ~1) as above
        assert np.abs(sent - amap[0]).max() <= step / 2 + 1e-5
        assert r["anomaly_map"]["max"] == pytest.approx(r["pred_score"], rel=1e-6)  # the score is the max
        assert set(r["timing_ms"]) == {"decode", "wait", "inference", "batch_size", "total"}
    # The class chosen per request picks that class's thresholds (or pooled, saying so).
    one = client.post("/api/predict", files=files((good.name, good.read_bytes())),
                      data={"class": "beta"}).json()["results"][0]
    expected = select_thresholds(model.thresholds, "beta", class_names=model.class_names)
    assert one["class"] == "beta" and one["image_threshold_source"] == expected.image_source


def test_single_file_errors_answer_that_files_status_and_name_it(model, client):
    ok = png_bytes(np.zeros((32, 32, 3), np.uint8))
    r = client.post("/api/predict", files=files(("notes.txt", b"just some text")))
    assert r.status_code == 415 and "notes.txt" in r.json()["detail"]
    assert "not a decodable image" in r.json()["detail"]
    r = client.post("/api/predict", files=files(("broken.png", ok[:60])))
    assert r.status_code == 415 and "broken.png" in r.json()["detail"]

    r = client.post("/api/predict", files=files(("part.png", ok)), data={"class": "gamma"})
    assert r.status_code == 422
    assert r.json()["detail"] == "unknown class 'gamma'; known classes: alpha, beta"

    r = client.post("/api/predict", data={"class": "alpha"})
    assert r.status_code in (415, 422)                 # no multipart body at all
    r = client.post("/api/predict", files=[("class", (None, "alpha"))])
    assert r.status_code == 422 and "no image" in r.json()["detail"]
    r = client.post("/api/predict", content=b"raw", headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]

    # Decompression bombs: refused from the header, before anything is decoded.
    r = client.post("/api/predict", files=files(("bomb.png", png_bomb(10_000, 10_000))))
    assert r.status_code == 413
    assert r.json()["detail"] == ("bomb.png: 10000 x 10000 = 100,000,000 pixels, more than "
                                  "the 40,000,000-pixel limit")
    r = client.post("/api/predict", files=files(("huge.png", png_bomb(20_000, 20_000))))
    assert r.status_code == 413 and "huge.png" in r.json()["detail"]
    assert "40,000,000-pixel limit" in r.json()["detail"]


def test_size_limits_per_file_and_per_request(model):
    small = TestClient(create_app(model, limits=Limits(max_file_bytes=50_000, max_pixels=10_000,
                                                       max_files=3, max_request_bytes=300_000)))
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    big = png_bytes(noise)                                    # ~58 kB, 19,200 pixels
    assert len(big) > 50_000
    r = small.post("/api/predict", files=files(("big.png", big)))
    assert r.status_code == 413
    assert r.json()["detail"] == "big.png: file larger than the 48.8 kB limit per file"
    wide = png_bytes(np.zeros((100, 101, 3), np.uint8))
    r = small.post("/api/predict", files=files(("wide.png", wide)))
    assert r.status_code == 413 and "10,100 pixels, more than the 10,000-pixel limit" in \
        r.json()["detail"]

    # Several files: 200, a status per file, the good one still scored.
    ok = png_bytes(np.full((64, 64, 3), 120, np.uint8))
    r = small.post("/api/predict", files=files(("ok.png", ok), ("big.png", big),
                                               ("text.txt", b"hello")))
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == [200, 413, 415]
    assert "pred_score" in r.json()["results"][0] and "big.png" in r.json()["results"][1]["detail"]


    # The request as a whole: too many files, or too many bytes -> 413 for all.
    r = small.post("/api/predict", files=files(*[(f"{i}.png", ok) for i in range(4)]))
    assert r.status_code == 413 and "too many files in one request: the limit is 3" in \
        r.json()["detail"]
    r = small.post("/api/predict", files=files(("a.png", b"\0" * 200_000), ("b.png", b"\0" * 200_000)))
    assert r.status_code == 413          # told by Content-Length, refused before reading
    assert r.json()["detail"] == ("request body of 391 kB is larger than the 293 kB limit per "
                                  "request")
    chunks = (b"--xx\r\n" if i == 0 else b"\0" * 50_000 for i in range(9))   # chunked: no length
    r = small.post("/api/predict", content=chunks,
                   headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 413
    assert r.json()["detail"] == "request body larger than the 293 kB limit per request"


def test_a_request_past_its_pixel_budget_answers_413_for_the_rest_and_the_server_serves_on(model):
    budget = TestClient(create_app(model, limits=Limits(max_request_pixels=2 * 64 * 64)))
    ok = png_bytes(np.full((64, 64, 3), 120, np.uint8))          # 4,096 pixels each
    r = budget.post("/api/predict", files=files(("a.png", ok), ("b.png", ok), ("c.png", ok)))
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == [200, 200, 413]
    assert r.json()["results"][2]["detail"] == (
        "c.png: the request's images pass the 8,192-pixel decode budget of one request "
        "(max_request_pixels); send the rest in another request")
    r = budget.post("/api/predict", files=files(("c.png", ok)))   # a new request, a new budget
    assert r.status_code == 200 and r.json()["results"][0]["status"] == 200



def test_full_queue_answers_503_with_retry_after_and_recovers(model):
    gated = Gated(model)
    app = create_app(gated, limits=Limits(queue=1))
    client = TestClient(app)
    image = png_bytes(np.full((64, 64, 3), 90, np.uint8))
    answers = []

    def post():
        answers.append(client.post("/api/predict", files=files(("p.png", image))))

    first = threading.Thread(target=post)
    first.start()
    assert gated.entered.wait(30)                    # the worker is busy with the first
    second = threading.Thread(target=post)
    second.start()
    deadline = time.time() + 30
    while client.get("/health").json()["in_flight"] < 2 and time.time() < deadline:
        time.sleep(0.02)
    full = client.post("/api/predict", files=files(("p.png", image)))
    assert full.status_code == 503
    assert int(full.headers["Retry-After"]) >= 1
    assert full.json()["detail"].startswith("busy: 2 requests are already being served or queued")
    gated.gate.set()
    first.join(60)
    second.join(60)
    assert [a.status_code for a in answers] == [200, 200]
    assert client.get("/health").json()["in_flight"] == 0
    assert client.post("/api/predict", files=files(("p.png", image))).status_code == 200


def test_a_failing_model_call_fails_that_request_only(model):
    gated = Gated(model, fail_once=True)
    gated.gate.set()
    client = TestClient(create_app(gated))
    image = files(("p.png", png_bytes(np.full((64, 64, 3), 90, np.uint8))))
    r = client.post("/api/predict", files=image)
    assert r.status_code == 500 and "simulated out of memory" in r.json()["detail"]
    assert client.post("/api/predict", files=image).status_code == 200
    assert client.get("/health").json() == {"status": "ok", "in_flight": 0, "capacity": 9,
                                            "served": 1}


def test_uploads_stay_in_memory_unless_save_is_given(model, tmp_path, monkeypatch):
    noise = np.random.default_rng(1).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    big = png_bytes(noise)
    assert len(big) > 1_000_000                      # Starlette would spool this to disk

    def no_disk(*a, **k):
        raise AssertionError("an upload was written to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    client = TestClient(create_app(model))
    r = client.post("/api/predict", files=files(("big.png", big)))
    assert r.status_code == 200 and r.json()["results"][0]["width"] == 700
    monkeypatch.undo()

    saving = TestClient(create_app(model, save_dir=tmp_path / "kept"))
    r = saving.post("/api/predict", files=files(("part one.png", big), ("x.txt", b"no")))
    assert [x["status"] for x in r.json()["results"]] == [200, 415]
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert len(kept) == 3 and kept[-1] == "predictions.csv"
    assert kept[0].endswith("-part_one.png") and kept[1].endswith("-part_one_overlay.png")
    assert (tmp_path / "kept" / kept[0]).read_bytes() == big
    overlay = np.asarray(Image.open(tmp_path / "kept" / kept[1]))
    assert overlay.shape == (700, 700, 3)
    rows = (tmp_path / "kept" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1] == "part one.png"


def test_model_endpoint_health_and_offline_docs(model, client):
    info = client.get("/api/model").json()
    assert info["class_names"] == ["alpha", "beta"] and info["image_size"] == 64
    assert info["kind"] == "checkpoint" and info["epoch"] == 2
    assert set(info["thresholds"]["classes"]) == {"alpha", "beta"}
    assert info["thresholds"]["pooled"]["image_threshold"] == model.thresholds.pooled.image
    assert set(info["metrics"]["classes"]) == {"alpha", "beta"}
    assert "image_auroc" in info["metrics"]["mean"]
    loss = info["loss"]          # the run's per-step training loss (checkpoint)
    assert loss["x"] == "step" and len(loss["points"]) == 6 and loss["points"][0][0] == 0
    assert all(np.isfinite(v) and v > 0 for _, v in loss["points"])
    assert len(info["drawing"]["ramp"]) == 256 and info["limits"]["max_file_bytes"] == 20 * 2**20
    assert client.get("/health").json()["status"] == "ok"

    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    for asset in ("static/app.js", "static/app.css"):
        assert client.get(f"/{asset}").status_code == 200
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-static/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower() and "cdn" not in page.text.lower()
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"/api/model", "/health"} <= set(spec["paths"])




@pytest.mark.slow
def test_a_client_vanishing_mid_upload_leaves_nothing_behind(model, tmp_path):
    import uvicorn

    app = create_app(model, save_dir=tmp_path / "kept")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 5000000\r\n\r\n"
                b"--zz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"cut.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head + b"\x89PNG" + b"\0" * 200_000)
                time.sleep(0.1)                     # then the client goes away mid-body
        base = f"http://127.0.0.1:{port}"
        while httpx.get(f"{base}/health").json()["in_flight"] and time.time() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{base}/health").json()["in_flight"] == 0
        assert not (tmp_path / "kept").exists() or not any((tmp_path / "kept").iterdir())
        image = png_bytes(np.full((64, 64, 3), 80, np.uint8))
        r = httpx.post(f"{base}/api/predict", files=files(("whole.png", image)), timeout=60)
        assert r.status_code == 200 and len(list((tmp_path / "kept").iterdir())) == 3
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_cli_serve_refuses_an_unknown_class_listing_the_known_ones(tiny):
    done = run_cli("serve", str(tiny[1]), "--class", "gamma", "--device", "cpu",
                   "--port", str(free_port()), timeout=300)
    assert done.returncode == 2
    assert "unknown class 'gamma'; known classes: alpha, beta" in done.stderr


@pytest.mark.slow
def test_serve_on_a_taken_port_is_a_one_line_error(tiny):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", str(tiny[1]), "--port", str(port), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mtad serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize("flag, value, says", [
    ("--max-file-mb", "-1", "must be greater than 0, got -1"),
    ("--queue", "-1", "must be 0 or more, got -1"),
    ("--max-files", "many", "not a number: 'many'"),
])
@pytest.mark.slow
def test_serve_limits_are_checked_naming_the_flag(flag, value, says):
    proc = run_cli("serve", "no-such-run", flag, value, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"mtad serve: error: argument {flag}: {says}"


@pytest.mark.slow
def test_stalled_uploads_hold_no_place_and_are_closed(model, monkeypatch):
    """Slowloris (bugcase 28; uvicorn PR #1192): uploads that stop after their headers and
    50 bytes, and connections that send nothing, must not keep others from the model.
    With one place in all (--queue 0), three stalled uploads: a normal upload is still
    answered 200 at once; the stalled ones get 408 once silent for UPLOAD_IDLE_S (1 s
    here), and the silent connections are closed."""
    import uvicorn

    from mtad.serve import app as serve_app

    monkeypatch.setattr(serve_app, "UPLOAD_IDLE_S", 1.0)
    app = create_app(model, limits=Limits(queue=0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           http=serve_app.silent_connections_close(1.0)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    sockets = []
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        image = png_bytes(np.full((64, 64, 3), 80, np.uint8))
        body = (b"--zz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--zz--\r\n")
        head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/"
                b"form-data; boundary=zz\r\nContent-Length: %d\r\n\r\n" % len(body))
        base = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{base}/api/predict", files=files(("warm.png", image)),
                          timeout=60).status_code == 200                # the model warmed up
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        sockets = silent + stalled
        for sock in stalled:
            sock.sendall(head + body[:50])
        time.sleep(0.2)
        r = httpx.post(f"{base}/api/predict", files=files(("whole.png", image)), timeout=60)
        assert r.status_code == 200       # was 503: the stalled uploads held the only place
        for sock in stalled:
            sock.settimeout(10)
            answer = sock.recv(4096)
            while not answer.endswith(b"}"):
                answer += sock.recv(4096) or b"}"
            assert answer.startswith(b"HTTP/1.1 408") and b"upload stalled: no data for 1 s" \
                in answer
        for sock in silent:
            sock.settimeout(10)
            assert sock.recv(1) == b""                                  # closed by the server
        assert httpx.get(f"{base}/health").json()["in_flight"] == 0
    finally:
        for sock in sockets:
            sock.close()
        server.should_exit = True
        thread.join(30)


def test_a_header_claiming_6000_x_6000_with_16_rows_is_refused_without_decoding(
        client, monkeypatch):
    """Bugcase 29: 16 rows of data behind a 6000 x 6000 header (36 M pixels, under the
    limit) took 21-38 s and 140 MB to decode, black-padded; it is a truncated file: 415,
    found before Pillow decodes a pixel (the time that saves: benchmarks/data.py)."""
    from PIL import ImageFile

    def decode(img):
        raise AssertionError(f"decoded {img.filename or 'an upload'}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    raw = zlib.compress(b"\0" * (1 + 3 * 6000) * 16, 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6000, 6000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    r = client.post("/api/predict", files=files(("under.png", data)))
    assert r.status_code == 415 and "under.png" in r.json()["detail"]
    assert "16 of 6000 rows" in r.json()["detail"]


def test_saved_predictions_csv_neutralises_formula_names(model, tmp_path):
    saving = TestClient(create_app(model, save_dir=tmp_path / "kept"))
    image = png_bytes(np.full((64, 64, 3), 80, np.uint8))
    r = saving.post("/api/predict", files=files(("=1+2.png", image), ("@SUM(A1).png", image)))
    assert [x["status"] for x in r.json()["results"]] == [200, 200]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "kept" / "predictions.csv", encoding="utf-8")))
    assert [row["image_path"] for row in rows] == ["'=1+2.png", "'@SUM(A1).png"]
    assert all(not row["saved_as"].startswith(("=", "@")) for row in rows)
