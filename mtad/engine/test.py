"""`mtad test`: evaluate a trained checkpoint on a test split."""
from __future__ import annotations

import copy

from pathlib import Path

from mtad.config import RunConfig, apply_overrides, config_from_dict, load_config
from mtad.engine import distributed as dist
from mtad.engine.checkpoint import run_dir_of
from mtad.engine.evaluate import evaluate
from mtad.engine.predict import load_model
from mtad.engine.train import open_split, summarise
from mtad.report import write_report


def run_test(checkpoint: str | Path, config: str | Path | None = None, overrides=(),
             out_dir: str | Path | None = None, log=print) -> dict:
    """Metrics of `checkpoint` on the test split of the config's dataset.

    The architecture always comes from the checkpoint; the data and eval
    sections come from `config` when given, else from the checkpoint.
    """
    device = dist.pick_device("auto")
    dist.init_from_env(device)
    model, ckpt = load_model(checkpoint, device)
    saved = config_from_dict(ckpt["config"])
    if config is not None:
        cfg: RunConfig = load_config(config, overrides)
    else:
        cfg = config_from_dict(apply_overrides(copy.deepcopy(ckpt["config"]), list(overrides)))
    cfg.model = saved.model
    if cfg.data.image_size != saved.data.image_size:
        log(f"note: evaluating at data.image_size={cfg.data.image_size}, "
            f"trained at {saved.data.image_size}")
    test_set = open_split(cfg, "test")
    results = evaluate(model, test_set, device, cfg.data.test_batch_size, cfg.data.num_workers,
                       cfg.train.amp, cfg.eval.streaming, cfg.eval.bins,
                       examples=cfg.eval.report_images)
    out = Path(out_dir) if out_dir else run_dir_of(checkpoint) / "test"
    if dist.is_main():
        write_report(out, summarise(results), ckpt["epoch"], [], test_set,
                     results.get("examples"), log=log)
    dist.barrier()
    return results
