"""`mtad demo`: the whole pipeline offline, from nothing to a report page."""
from __future__ import annotations

import time
from pathlib import Path

from mtad.config import load_config


def run_demo(out: Path, config_path: Path, overrides=(), log=print) -> Path:
    """Synthesise the demo data (once), train on it (or resume, or reuse a finished
    run), evaluate, and leave results.json, results.md and report.html in <out>/run."""
    from mtad.data.synth import make_demo_dataset
    from mtad.engine.test import run_test
    from mtad.engine.train import train
    from mtad.runfile import read_run

    out = Path(out).resolve()  # the saved config must find the data from anywhere
    data_dir, run_dir = out / "data", out / "run"
    started = time.time()
    if not (data_dir / "demo_summary.json").exists():
        log(f"[demo] writing the demo dataset to {data_dir}")
        make_demo_dataset(data_dir, seed=0)
        log(f"[demo] dataset ready in {time.time() - started:.0f}s")
    else:
        log(f"[demo] reusing the demo dataset in {data_dir}")
    cfg = load_config(config_path, [*overrides, f"data.root={data_dir}", f"train.out_dir={run_dir}"])
    trained = time.time()
    if (run_dir / "last.pt").exists():
        if overrides:
            log(f"[demo] note: {run_dir} already holds a run, which keeps its own config; the "
                f"overrides {' '.join(overrides)} are not applied (use --out NEW_FOLDER to train "
                f"with them)")
        record = read_run(run_dir)
        if record.epoch < record.config["train"]["epochs"]:
            log(f"[demo] resuming the stopped run in {run_dir} at epoch {record.epoch}")
            train(None, resume=run_dir, log=log)
        else:
            log(f"[demo] {run_dir} already holds a finished run; evaluating it again")
            run_test(run_dir / "last.pt", out_dir=run_dir, log=log)
    else:
        train(cfg, log=log)
    log(f"[demo] trained and evaluated in {time.time() - trained:.0f}s "
        f"(total {time.time() - started:.0f}s)")
    for name in ("results.json", "results.md", "report.html"):
        log(f"[demo] {run_dir / name}")
    return run_dir
