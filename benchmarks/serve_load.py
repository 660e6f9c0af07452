"""`mtad serve` under load, next to in-process prediction, in one run.

Starts `mtad serve` on 127.0.0.1 (a subprocess, as a user would), sends a bounded
number of single-image POST /api/predict requests at concurrency 1, 4 and 16
from a separate client process, and prints per level: p50/p95/p99 latency,
images/s, errors (503s are planned: the queue is full by design at 16), the
client's own CPU time, and the server's RSS after warm-up and at the end.
In-process prediction of the same images one at a time (decode + resize +
model, and the model alone) is measured in this process while the server is
idle, before and after the load, and the mean of the two is the reference.

The model is the demo architecture (EfficientNet-Lite0, depths 3-4-6-3, 128 px;
random weights: speed does not depend on them) saved as a run checkpoint, or
any run / export given with --model. The client uses only the standard library
(http.client, keep-alive, threads) with pre-built request bodies, and reports
its CPU time from os.times(): on this 2-core machine it shares the cores with
the server, so its cost is printed next to the numbers it disturbs.

    .venv/bin/python benchmarks/serve_load.py [--requests 100] [--time-limit 60] [--quick] [--log]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT = r'''
import http.client, json, os, sys, threading, time
spec = json.loads(sys.stdin.read())
bodies = [bytes.fromhex(b) for b in spec["bodies"]]
boundary = spec["boundary"]
lock = threading.Lock()
state = {"next": 0, "lat": [], "codes": {}, "errors": []}
deadline = time.perf_counter() + spec["time_limit"]

def worker():
    conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=120)
    while True:
        with lock:
            i = state["next"]
            if i >= spec["requests"] or time.perf_counter() > deadline:
                return
            state["next"] += 1
        body = bodies[i % len(bodies)]
        while True:
            t = time.perf_counter()
            try:
                conn.request("POST", "/api/predict", body, {
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(len(body))})
                r = conn.getresponse()
                data = r.read()
                code, retry = r.status, r.getheader("Retry-After")
            except Exception as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=120)
                code, retry, data = f"exception {type(exc).__name__}", None, b""
            with lock:
                state["codes"][str(code)] = state["codes"].get(str(code), 0) + 1
            if code == 503 and time.perf_counter() < deadline:
                time.sleep(float(retry or 1))      # as a polite client does
                continue
            if code == 200:
                with lock:
                    state["lat"].append(time.perf_counter() - t)
            elif len(state["errors"]) < 5:
                state["errors"].append(f"{code}: {data[:200]!r}")
            break

cpu0, t0 = os.times(), time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(spec["concurrency"])]
for th in threads: th.start()
for th in threads: th.join()
cpu1, wall = os.times(), time.perf_counter() - t0
print(json.dumps({"wall": wall, "latencies": state["lat"], "codes": state["codes"],
                  "errors": state["errors"],
                  "client_cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def demo_checkpoint(folder: Path) -> Path:
    """The demo's architecture as a run checkpoint (random weights, placeholder thresholds)."""
    from mtad.config import load_config
    from mtad.models import MTAD
    from mtad.runfile import RunFile, save_run

    cfg = load_config(Path(__file__).parents[1] / "mtad/configs/demo.yaml", ["model.weights=none"])
    model = MTAD(cfg.model)
    run = folder / "run"
    run.mkdir(parents=True)
    save_run(RunFile(model=model.state_dict(), config=cfg.to_dict(), class_names=["part"],
                     thresholds={"image": 1.0, "pixel": 1.0, "source": "benchmark placeholder",
                                 "epoch": 0, "classes": {}}), run / "last.pt")
    return run


def make_images(n: int, size: int = 256) -> list[bytes]:
    """Smooth random textures as PNG files, like the demo's 256 px images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def multipart(data: bytes, name: str, boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()


def in_process(model, images: list[bytes], rounds: int) -> tuple[float, float]:
    """(images/s decode+resize+predict, images/s predict alone), one image at a time
    (``rounds`` passes over ``images``)."""
    from mtad.data.transforms import model_input
    from mtad.serve.uploads import decode_image

    xs = [model_input(decode_image(b, "x", 10**9), model.image_size)[None] for b in images]
    t = time.perf_counter()
    for _ in range(rounds):
        for b in images:
            model.predict(model_input(decode_image(b, "x", 10**9), model.image_size)[None])
    full = rounds * len(images) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(rounds):
        for x in xs:
            model.predict(x)
    alone = rounds * len(images) / (time.perf_counter() - t)
    return full, alone


def in_process_both(model, images: list[bytes], rounds: int) -> tuple[float, float]:
    """`in_process` on the main thread and on a second thread (as the server's worker
    runs it); the faster of each pair. Under CPU contention torch's 2-thread OpenMP
    regions on the main thread ran several times slower here than on another thread,
    so the server is compared with whichever is faster, not with the slow one."""
    import threading

    main = in_process(model, images, rounds)
    box = []
    thread = threading.Thread(target=lambda: box.append(in_process(model, images, rounds)))
    thread.start()
    thread.join()
    print(f"  in-process images/s (decode+predict, model alone): main thread "
          f"{main[0]:.2f}, {main[1]:.2f}; other thread {box[0][0]:.2f}, {box[0][1]:.2f}")
    return max(main[0], box[0][0]), max(main[1], box[0][1])


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def start_server(model_path: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    """`mtad serve MODEL` on a free 127.0.0.1 port, once /health answers (3 min at most)."""
    import urllib.request

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mtad", "serve", str(model_path),
                               "--port", str(port), "--device", "cpu", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return server, port
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise SystemExit(f"server did not start: {server.stdout.read()}")
            time.sleep(0.3)


def load_level(port: int, bodies: list[str], boundary: str, concurrency: int, requests: int,
               time_limit: float) -> dict:
    spec = {"port": port, "bodies": bodies, "boundary": boundary, "concurrency": concurrency,
            "requests": requests, "time_limit": time_limit}
    done = subprocess.run([sys.executable, "-c", CLIENT], input=json.dumps(spec),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def compare_log(model_path: Path, tmp: Path, bodies: list[str], boundary: str, args) -> None:
    """The cost of the inspection log: the same model served twice, without and with
    --log, both resident; rounds at concurrency 4 alternate between them, so drift
    of a shared machine's speed falls on both."""
    import sqlite3
    import statistics

    db = tmp / "inspections.db"
    plain, plain_port = start_server(model_path, [])
    logged, log_port = start_server(model_path, ["--log", str(db)])
    ips = {"without": [], "with": []}
    try:
        for port in (plain_port, log_port):                              # warm-up
            load_level(port, bodies, boundary, 9, 2 * len(bodies), args.time_limit)
        for _ in range(2 * args.rounds):
            for name, port in (("without", plain_port), ("with", log_port)):
                r = load_level(port, bodies, boundary, 4, args.requests, args.time_limit)
                ips[name].append(len(r["latencies"]) / r["wall"])
                print(f"  {name} log: {len(r['latencies'])} answered, {ips[name][-1]:.2f} images/s "
                      f"{dict(r['codes'])}", flush=True)
    finally:
        for server in (plain, logged):
            server.terminate()
            server.wait(30)
    with sqlite3.connect(db) as con:          # the WAL folded in: the file's own size
        rows = con.execute("SELECT COUNT(*) FROM inspections").fetchone()[0]
        flagged = con.execute("SELECT COUNT(*) FROM inspections WHERE verdict != 'OK'").fetchone()[0]
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = sum(p.stat().st_size for p in tmp.glob(db.name + "*"))
    images = tmp / "inspections.images"
    kept = sum(p.stat().st_size for p in images.rglob("*") if p.is_file()) if images.is_dir() else 0
    a, b = statistics.median(ips["without"]), statistics.median(ips["with"])
    print(f"\nconcurrency 4, median of {len(ips['with'])} alternating rounds of {args.requests} "
          f"requests: without log {a:.2f} images/s, with --log {b:.2f} images/s: "
          f"{b / a:.1%} ({'within' if b >= 0.95 * a else 'NOT within'} 5 %)")
    print(f"inspection log: {rows} rows ({flagged} not OK, their images kept), database "
          f"{size / 1e6:.3f} MB after a WAL checkpoint ({size / max(rows, 1) * 1e4 / 1e6:.2f} MB per 10,000 "
          f"inspections); kept images {kept / 1e6:.1f} MB ({kept / max(flagged, 1) / 1e3:.0f} kB "
          f"each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a run folder or export (default: the demo "
                        "architecture with random weights)")
    parser.add_argument("--requests", type=int, default=100, help="requests per concurrency level")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per level at most")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--images", type=int, default=16, help="distinct images sent in turn")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images for "
                        "each in-process measurement")
    parser.add_argument("--photos", help="a folder of PNG photos to send (the first --images "
                        "of them) instead of random textures, e.g. good parts so that the "
                        "log's verdicts are a line's mix")
    parser.add_argument("--quick", action="store_true", help="30 requests per level")
    parser.add_argument("--log", action="store_true", help="instead of the levels: two servers "
                        "of the same model, one without and one with --log (default --keep "
                        "flagged), loaded in turn at concurrency 4 (--rounds x 2 each); "
                        "images/s of each, their ratio, and the database's size per 10,000 "
                        "inspections")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 30, 1
    import numpy as np
    import torch

    from mtad.deploy import open_model

    tmp = tempfile.TemporaryDirectory(prefix="mtad-serve-bench-")
    model_path = Path(args.model) if args.model else demo_checkpoint(Path(tmp.name))
    images = (make_images(args.images) if not args.photos else
              [p.read_bytes() for p in sorted(Path(args.photos).glob("*.png"))[:args.images]])
    boundary = "mtadbenchboundary7d1c"
    bodies = [multipart(b, f"img{i}.png", boundary).hex() for i, b in enumerate(images)]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; model {model_path}; {len(images)} PNG images of 256 px")

    if args.log:
        return compare_log(model_path, Path(tmp.name), bodies, boundary, args)
    model = open_model(model_path, "cpu")
    print(f"model input {model.image_size} px; server: mtad serve, default limits "
          f"(queue 8, batch 8)")
    server, port = start_server(model_path, [])
    try:
        def load(concurrency: int, requests: int) -> dict:
            return load_level(port, bodies, boundary, concurrency, requests, args.time_limit)

        # Warm-up, up to full batches (the allocator keeps what the largest batch needed).
        load(9, 4 * len(images))
        rss_warm = rss_mb(server.pid)
        for _ in range(3):                                               # warm-up here too
            model.predict(np.zeros((1, 3, model.image_size, model.image_size), np.float32))
        # In-process right before and right after each level: on a shared machine the
        # speed drifts, so each level is compared with the mean of its two neighbours.
        rows, refs = [], [in_process_both(model, images, args.rounds)]
        for level in [int(x) for x in args.levels.split(",")]:
            r = load(level, args.requests)
            print(f"  concurrency {level}: {len(r['latencies'])} answered in {r['wall']:.1f} s, "
                  f"server RSS {rss_mb(server.pid):.0f} MB", flush=True)
            rows.append((level, r, [1000 * x for x in r["latencies"]]))
            refs.append(in_process_both(model, images, args.rounds))
        rss_end = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
        tmp.cleanup()

    print("\nin-process, one image at a time (images/s, the faster thread), measured before "
          "the first level and after each: decode+resize+predict " + " / ".join(f"{r[0]:.2f}" for r in refs)
          + "; model alone " + " / ".join(f"{r[1]:.2f}" for r in refs))
    print(f"\n{'conc.':>5} {'ok':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'images/s':>9} "
          f"{'in-proc':>8} {'ratio':>6} {'vs model':>9} {'client CPU':>11}  other statuses")
    ratios = {}
    for i, (level, r, lat) in enumerate(rows):
        ips = len(lat) / r["wall"]
        ref_full = (refs[i][0] + refs[i + 1][0]) / 2
        ref_model = (refs[i][1] + refs[i + 1][1]) / 2
        ratios[level] = ips / ref_full
        others = {k: v for k, v in r["codes"].items() if k != "200"}
        print(f"{level:>5} {len(lat):>4} {pct(lat, 50):>8.1f} {pct(lat, 95):>8.1f} "
              f"{pct(lat, 99):>8.1f} {ips:>9.2f} {ref_full:>8.2f} {ips / ref_full:>6.0%} "
              f"{ips / ref_model:>9.0%} "
              f"{1000 * r['client_cpu'] / max(1, len(lat)):>6.1f} ms/req  "
              f"{others or '-'}" + (f"  errors: {r['errors']}" if r["errors"] else ""))
    print("\nclient CPU: the client is a separate process (stdlib only, keep-alive, pre-built "
          "bodies); 'client CPU' is its user+system time per successful request, measured "
          "with os.times(), on the same cores as the server")
    growth = (rss_end - rss_warm) / rss_warm
    print(f"server RSS: {rss_warm:.0f} MB after warm-up, {rss_end:.0f} MB at the end "
          f"({growth:+.1%})")
    if 4 in ratios:
        print(f"goal: concurrency 4 >= 90% of in-process images/s: {ratios[4]:.0%} "
              f"({'met' if ratios[4] >= 0.9 else 'NOT met'}); RSS within 10%: "
              f"{'met' if abs(growth) <= 0.10 else 'NOT met'}")


if __name__ == "__main__":
    main()
