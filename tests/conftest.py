"""Shared test data: a tiny two-class MVTec-layout set and a tiny run trained on it
(made once per session: several test files use the same run)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtad.config import load_config
from mtad.engine.train import train

SIZE = 64


def write_tiny_mvtec(root: Path, seed: int = 0) -> Path:
    """Two classes of smooth random textures; defects are bright squares."""
    rng = np.random.default_rng(seed)
    for cls, tint in (("alpha", (1.0, 0.8, 0.6)), ("beta", (0.6, 0.9, 1.0))):
        def texture():
            base = rng.random((8, 8))
            img = np.kron(base, np.ones((SIZE // 8, SIZE // 8)))[..., None] * np.array(tint)
            return (img * 160 + 40).astype(np.uint8)

        for split, n in (("train/good", 6), ("test/good", 3)):
            (root / cls / split).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(texture()).save(root / cls / split / f"{i:03d}.png")
        (root / cls / "test/square").mkdir(parents=True)
        (root / cls / "ground_truth/square").mkdir(parents=True)
        for i in range(3):
            img, mask = texture(), np.zeros((SIZE, SIZE), np.uint8)
            y, x = rng.integers(4, SIZE - 20, size=2)
            img[y:y + 14, x:x + 14] = 255
            mask[y:y + 14, x:x + 14] = 255
            Image.fromarray(img).save(root / cls / "test/square" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / cls / "ground_truth/square" / f"{i:03d}_mask.png")
    return root


def tiny_overrides(data_root, out_dir, epochs=2):
    return [f"data.root={data_root}", f"train.out_dir={out_dir}", f"train.epochs={epochs}",
            f"data.image_size={SIZE}", "data.batch_size=4", "data.test_batch_size=4",
            "data.num_workers=0", "model.encoder=efficientnet_lite0", "model.weights=none",
            "model.depths=[1,1,1,1]", "train.eval_every=0", "eval.report_images=3",
            "optim.lr=1e-3"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return write_tiny_mvtec(tmp_path_factory.mktemp("tiny") / "mvtec")


@pytest.fixture(scope="session")
def trained_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(None, tiny_overrides(data_root, out, epochs=2))
    train(cfg, log=lambda *a: None)
    return out


def run_cli(*args, env_extra=None, timeout=600, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "mtad", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)




def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run, log_file: Path, *args, timeout: float = 300):
    """`mtad serve RUN --port P --device cpu ARGS` in a subprocess whose output goes to
    `log_file`; returns (process, base URL) once /health answers 200. The timeout allows
    a fresh environment's one-time kernel build. Raises AssertionError with the log's
    tail when the server exits or does not answer in time."""
    import time

    import httpx

    port = free_port()
    out = open(log_file, "w")
    proc = subprocess.Popen([sys.executable, "-m", "mtad", "serve", str(run), "--port", str(port),
                             "--device", "cpu", *map(str, args)],
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()   # the child holds its own descriptor
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"mtad serve did not start: {Path(log_file).read_text()[-2000:]}")
        time.sleep(0.2)


def stop_server(proc) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(20)
