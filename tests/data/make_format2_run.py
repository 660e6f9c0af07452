"""Write tests/data/format2/: a tiny run, its ONNX export and a stopped run (a
mid-training state) as mtad wrote them in run format 2 before the run file had
one home (issue 18), and what they scored on fixed inputs.

The run file's writer and reader moved into one module (mtad/runfile.py); these
files, made by the code before that change, must keep loading, scoring and
resuming exactly as they did (tests/test_runfile.py).

This was run once, with the code of that time on the path:

    cd <checkout> && PYTHONPATH=$PWD flock /tmp/mtad-heavy.lock \
        .venv/bin/python tests/data/make_format2_run.py   # main at f312845, ~1 min

It trains a tiny model (the legacy data's: ghostnet_050 encoder, random weights,
one MTRec block a level, 8x8 windows, 64 px) for 2 epochs on tests/conftest.py's
tiny data, evaluating after each (so every checkpoint holds thresholds), twice:
once through (``run``), and once stopped after the first epoch's checkpoint
(``stopped``: its last.pt holds the optimizer, scheduler, scaler and RNG states
a resume continues from; resuming it must give ``run``'s weights exactly). It
exports ``run`` to ONNX and records torch's and onnxruntime's maps and scores on
two fixed images. To keep the test data small, run/last.pt is stored without
its training state (only stopped/ is resumed), last.pt and model.onnx are
gzipped (the tests unpack them), and no report files are kept; every byte that
load_run, resume and ExportedModel read is as written.
"""
from __future__ import annotations

import io
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ for conftest's tiny data
sys.path.insert(0, str(HERE))

from conftest import tiny_overrides, write_tiny_mvtec  # noqa: E402
from make_legacy_run import MODEL, fixed_images, gzip_file  # noqa: E402

from mtad.config import load_config  # noqa: E402
from mtad.deploy.export import export_model  # noqa: E402
from mtad.deploy.inferencer import ExportedModel  # noqa: E402
from mtad.deploy.torch_model import Normalised  # noqa: E402
from mtad.engine.checkpoint import load_run  # noqa: E402
from mtad.engine.train import train  # noqa: E402

OUT = HERE / "format2"


class Stop(Exception):
    pass


def stop_before_epoch_two(line: str) -> None:
    # train logs "epoch 2/2 ..." after the second epoch's steps, before its checkpoint:
    # last.pt then holds the state after epoch 1 (evaluated), as a killed run leaves it.
    if str(line).startswith("epoch 2/2"):
        raise Stop


def torch_scores(run_dir: Path, x: np.ndarray):
    run = load_run(run_dir, "cpu")
    with torch.no_grad():
        maps, scores = Normalised(run.model).eval()(torch.from_numpy(x))
    return run, maps.numpy(), scores.numpy()


def cpu_isa() -> str:
    """'avx512' or 'avx2': the float32 kernels torch picks (bit-identity holds on the same)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512" if "avx512f" in flags else "avx2"


def main() -> None:
    import mtad

    print(f"mtad from {mtad.__file__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_tiny_mvtec(tmp / "mvtec")
        overrides = MODEL + ["train.eval_every=1", "eval.report_images=0"]
        run_dir, stopped_dir = tmp / "run", tmp / "stopped"
        train(load_config(None, tiny_overrides(data, run_dir, epochs=2) + overrides), log=print)
        try:
            train(load_config(None, tiny_overrides(data, stopped_dir, epochs=2) + overrides),
                  log=stop_before_epoch_two)
        except Stop:
            pass
        export_dir = tmp / "export"
        export_model(run_dir, "onnx", out=export_dir, batch="dynamic", log=print)

        images = fixed_images()
        x = images.astype(np.float32) / 255.0
        run, t_map, t_score = torch_scores(run_dir, x)
        stopped, s_map, s_score = torch_scores(stopped_dir, x)
        assert stopped.epoch == 1 and run.epoch == 2
        o_map, o_score = ExportedModel(export_dir).predict(x)

        if OUT.exists():
            shutil.rmtree(OUT)
        for name, src in (("run", run_dir), ("stopped", stopped_dir)):
            (OUT / name).mkdir(parents=True)
            ckpt = torch.load(src / "last.pt", map_location="cpu", weights_only=True)
            if name == "run":
                for key in ("optimizer", "scheduler", "scaler", "rng"):
                    ckpt.pop(key, None)
                buffer = io.BytesIO()
                torch.save(ckpt, buffer)
                data_bytes = buffer.getvalue()
            else:
                data_bytes = (src / "last.pt").read_bytes()  # exactly as written
            gzip_file(data_bytes, OUT / name / "last.pt.gz")
            for file in ("config.yaml", "results.json", "history.json"):
                if (src / file).is_file():
                    shutil.copy(src / file, OUT / name / file)
        (OUT / "export").mkdir()
        shutil.copy(export_dir / "metadata.json", OUT / "export" / "metadata.json")
        gzip_file((export_dir / "model.onnx").read_bytes(), OUT / "export" / "model.onnx.gz")
        np.savez_compressed(OUT / "scores.npz", images=images,
                            torch_anomaly_map=t_map, torch_pred_score=t_score,
                            stopped_anomaly_map=s_map, stopped_pred_score=s_score,
                            onnx_anomaly_map=o_map, onnx_pred_score=o_score)
        (OUT / "made.json").write_text(json.dumps({
            "cpu_isa": cpu_isa(), "machine": platform.machine(), "torch": torch.__version__,
            "mtad": mtad.__version__, "commit": "f312845"}, indent=1) + "\n")
        (OUT / "README.md").write_text(
            "Written by tests/data/make_format2_run.py (see its docstring): a run, its ONNX\n"
            "export and a run stopped after epoch 1 of 2, in run format 2 as mtad wrote them\n"
            "before the run file had one home (issue 18), and their scores on `images`.\n"
            f"mtad {mtad.__version__}; torch {torch.__version__}; made on {cpu_isa()}.\n"
            f"pooled thresholds: {json.dumps({k: run.thresholds[k] for k in ('image', 'pixel')})}\n")
    print("torch scores", t_score, "stopped", s_score, "onnx scores", o_score)
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
