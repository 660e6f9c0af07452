"""Write tests/data/legacy/: a tiny run and its ONNX export as mtad wrote them
before run format 2 (issue 17), and what they scored on fixed inputs.

Run format 1 (no ``run_format`` key in last.pt) is mtad before issue 17: the
position embedding's halves were [sincos(row) | sincos(column)], the neck's
three 1x1 convolutions had no bias, and the anomaly map was the plain sum of
the three scales' 1 - cos maps (9x the official one). A run of that format
must keep loading and scoring as it did (test_official.py::test_legacy_*).

This was run once, with the code of that time on the path:

    cd <checkout> && PYTHONPATH=/work/main flock /tmp/mtad-heavy.lock \
        .venv/bin/python tests/data/make_legacy_run.py   # main at ba16a2f, ~1 min

It trains 1 epoch of a tiny model (ghostnet_050 encoder, random weights,
one MTRec block a level, 8x8 windows, 64 px) on tests/conftest.py's tiny data,
evaluates it (so it holds calibrated thresholds), exports it to ONNX, and
records torch's and onnxruntime's maps and scores on two fixed images.
To keep the test data small (1.5 MB in all), last.pt is stored without its
optimizer state (resume is not what it tests), last.pt and model.onnx are
gzipped (the tests unpack them), and the export has no report files; every
byte that load_run and ExportedModel read is as written.
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ for conftest's tiny data

from conftest import tiny_overrides, write_tiny_mvtec  # noqa: E402

from mtad.config import load_config  # noqa: E402
from mtad.deploy.export import export_model  # noqa: E402
from mtad.deploy.inferencer import ExportedModel  # noqa: E402
from mtad.deploy.torch_model import Normalised  # noqa: E402
from mtad.engine.checkpoint import load_run  # noqa: E402
from mtad.engine.train import train  # noqa: E402

OUT = HERE / "legacy"
MODEL = ["model.encoder=ghostnet_050", "model.heads=4", "model.window=8", "model.d_state=4",
         "model.mlp_ratio=0.25", "model.neck_blocks=1"]


def fixed_images() -> np.ndarray:
    """Two 64 px RGB images as uint8 (stored, so no RNG version matters)."""
    rng = np.random.default_rng(17)
    base = rng.integers(0, 256, size=(2, 3, 8, 8)).astype(np.float64)
    images = np.kron(base, np.ones((1, 1, 8, 8)))  # blocky textures like the training data
    images[1, :, 20:34, 30:44] = 255.0             # one bright square, as the test defects
    return images.astype(np.uint8)


def gzip_file(data: bytes, path: Path) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(data)


def main() -> None:
    import mtad

    print(f"mtad from {mtad.__file__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_tiny_mvtec(tmp / "mvtec")
        run_dir = tmp / "run"
        overrides = tiny_overrides(data, run_dir, epochs=1) + MODEL
        train(load_config(None, overrides), log=print)
        export_dir = tmp / "export"
        export_model(run_dir, "onnx", out=export_dir, batch="dynamic", log=print)

        images = fixed_images()
        x = images.astype(np.float32) / 255.0
        run = load_run(run_dir, "cpu")
        with torch.no_grad():
            t_map, t_score = Normalised(run.model).eval()(torch.from_numpy(x))
        o_map, o_score = ExportedModel(export_dir).predict(x)

        if OUT.exists():
            shutil.rmtree(OUT)
        (OUT / "run").mkdir(parents=True)
        ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        for key in ("optimizer", "scheduler", "scaler", "rng"):
            ckpt.pop(key, None)
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        gzip_file(buffer.getvalue(), OUT / "run" / "last.pt.gz")
        for name in ("config.yaml", "results.json"):
            shutil.copy(run_dir / name, OUT / "run" / name)
        (OUT / "export").mkdir()
        shutil.copy(export_dir / "metadata.json", OUT / "export" / "metadata.json")
        gzip_file((export_dir / "model.onnx").read_bytes(), OUT / "export" / "model.onnx.gz")
        np.savez_compressed(OUT / "scores.npz", images=images,
                            torch_anomaly_map=t_map.numpy(), torch_pred_score=t_score.numpy(),
                            onnx_anomaly_map=o_map, onnx_pred_score=o_score)
        (OUT / "README.md").write_text(
            "Written by tests/data/make_legacy_run.py (see its docstring): a run and its ONNX\n"
            "export in run format 1 (before issue 17), and their scores on `images`.\n"
            f"mtad {mtad.__version__}; torch {torch.__version__}.\n"
            f"pooled thresholds: {json.dumps({k: run.thresholds[k] for k in ('image', 'pixel')})}\n")
    print("torch scores", t_score.numpy(), "onnx scores", o_score)
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
