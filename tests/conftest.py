"""Shared test data, one definition each: the tiny architecture (TINY_MODEL), the tiny
two-class MVTec-layout set (write_tiny_mvtec), an untrained tiny run (save_untrained_run,
the `tiny_run` fixture) and a tiny run trained on the set (`trained_run`, made once per
session: several test files use the same run); and helpers to run the CLI and a server."""
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtad.config import load_config
from mtad.engine.train import train

SIZE = 64
TINTS = {"alpha": (1.0, 0.8, 0.6), "beta": (0.6, 0.9, 1.0)}

# the tiny architecture every test model uses: untrained EfficientNet-Lite0, one block a level
TINY_MODEL = [f"data.image_size={SIZE}", "model.encoder=efficientnet_lite0", "model.weights=none",
              "model.depths=[1,1,1,1]"]

# fixed thresholds of an untrained run: pooled, and per class (beta has no pixel level)
THRESHOLDS = {"image": 0.5, "pixel": 0.4, "source": "test split", "epoch": 1,
              "classes": {"alpha": {"image": 0.45, "pixel": 0.35},
                          "beta": {"image": 0.55, "pixel": None}},
              "missing": {}}


def texture(rng, tint, size: int = SIZE) -> np.ndarray:
    """A smooth random texture (8 x 8 blocks), tinted: size x size x 3 uint8 in 40..200."""
    base = rng.random((8, 8))
    img = np.kron(base, np.ones((size // 8, size // 8)))[..., None] * np.array(tint)
    return (img * 160 + 40).astype(np.uint8)


def write_tiny_mvtec(root: Path, seed: int = 0, n_train: int = 6, n_good: int = 3,
                     n_defect: int = 3) -> Path:
    """Two classes (alpha, beta) of smooth random textures in the MVTec AD layout;
    defects are bright 14 px squares, their masks the squares. Folders with no image
    (n_good or n_defect 0) are not made."""
    rng = np.random.default_rng(seed)
    for cls, tint in TINTS.items():
        for split, n in (("train/good", n_train), ("test/good", n_good)):
            if n:
                (root / cls / split).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(texture(rng, tint)).save(root / cls / split / f"{i:03d}.png")
        if n_defect:
            (root / cls / "test/square").mkdir(parents=True)
            (root / cls / "ground_truth/square").mkdir(parents=True)
        for i in range(n_defect):
            img, mask = texture(rng, tint), np.zeros((SIZE, SIZE), np.uint8)
            y, x = rng.integers(4, SIZE - 20, size=2)
            img[y:y + 14, x:x + 14] = 255
            mask[y:y + 14, x:x + 14] = 255
            Image.fromarray(img).save(root / cls / "test/square" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / cls / "ground_truth/square" / f"{i:03d}_mask.png")
    return root


def tiny_overrides(data_root, out_dir, epochs=2):
    return [f"data.root={data_root}", f"train.out_dir={out_dir}", f"train.epochs={epochs}",
            *TINY_MODEL, "data.batch_size=4", "data.test_batch_size=4", "data.num_workers=0",
            "train.eval_every=0", "eval.report_images=3", "optim.lr=1e-3"]


def save_untrained_run(run: Path, overrides=(), seed: int = 0, class_names=("alpha", "beta"),
                       thresholds=THRESHOLDS) -> Path:
    """A run folder (`run`/last.pt) holding the tiny architecture (TINY_MODEL, then
    `overrides`) with its initial weights from torch seed `seed`, `class_names` and
    fixed `thresholds`: what predict, serve, calibrate and export load, without the
    CPU time of training (for tests whose subject is not the scores)."""
    import torch

    from mtad.models import MTAD
    from mtad.runfile import RunFile, save_run

    cfg = load_config(None, [*TINY_MODEL, *overrides])
    torch.manual_seed(seed)
    model = MTAD(cfg.model)
    save_run(RunFile(model=model.state_dict(), config=cfg.to_dict(), epoch=1,
                     class_names=list(class_names), thresholds=thresholds), Path(run) / "last.pt")
    return Path(run)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return write_tiny_mvtec(tmp_path_factory.mktemp("tiny") / "mvtec")


@pytest.fixture(scope="session")
def trained_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(None, tiny_overrides(data_root, out, epochs=2))
    train(cfg, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def tiny_run(data_root, tmp_path_factory):
    """An untrained tiny run (save_untrained_run) whose config names the session's data;
    shared read-only: tests write their outputs elsewhere."""
    run = tmp_path_factory.mktemp("untrained") / "run"
    return save_untrained_run(run, tiny_overrides(data_root, run))


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


def unpack_test_data(source: Path, dest: Path) -> Path:
    """A copy of a tests/data folder in ``dest`` with its ``*.gz`` files (last.pt,
    model.onnx: stored gzipped) unpacked beside them."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
    for packed in dest.rglob("*.gz"):
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    return dest


def recorded_inputs(folder: Path):
    """(the scores recorded when a tests/data folder was made, its images as model input:
    N x 3 x S x S float32 in [0, 1])."""
    recorded = np.load(folder / "scores.npz")
    return recorded, recorded["images"].astype(np.float32) / 255.0
