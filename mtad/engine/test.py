"""`mtad test`: evaluate a trained run on a test split."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

from mtad.config import RunConfig, apply_overrides, config_from_dict, load_config
from mtad.data import open_split
from mtad.data.errors import DataWarning
from mtad.engine import distributed as dist
from mtad.engine.evaluate import evaluate
from mtad.report.page import write_report
from mtad.runfile import load_run, pick_device, read_run, save_run


def run_test(run: str | Path, config: str | Path | None = None, overrides=(),
             out_dir: str | Path | None = None, device: str | None = None,
             save_thresholds: bool = False, log=print) -> dict:
    """Metrics of a run (its folder or checkpoint file) on the test split of the config's dataset.

    The architecture and weights always come from the checkpoint; the data and
    eval sections come from `config` when given, else from the run's own config;
    the device from `device`, else the config's ``train.device``. With
    `save_thresholds`, the F1-optimal thresholds it calibrates replace the run's
    (its checkpoint's ``thresholds`` entry, in the trainer's format, written
    atomically), so that predict, export and serve use them.
    """
    saved = load_run(run, "cpu")
    if config is not None:
        cfg: RunConfig = load_config(config, overrides)
    else:
        cfg = config_from_dict(apply_overrides(copy.deepcopy(saved.config.to_dict()), list(overrides)))
    cfg.model = saved.config.model
    target = pick_device(device or cfg.train.device)
    dist.init_from_env(target)
    try:
        model = saved.model.to(target)
        if cfg.data.image_size != saved.config.data.image_size:
            log(f"note: the model sees data.image_size={cfg.data.image_size} px; "
                f"it was trained at {saved.config.data.image_size}")
        test_set = open_split(cfg.data, "test", mask_size=cfg.eval.size)
        test_set.validate()
        unseen = sorted(set(test_set.classes) - set(saved.class_names or []))
        if unseen and saved.class_names and dist.is_main():
            warnings.warn(f"the model was not trained on class{'es' * (len(unseen) > 1)} "
                          f"{', '.join(unseen)} of {cfg.data.root} (it was trained on "
                          f"{', '.join(saved.class_names)}): those rows measure parts it never "
                          "saw", DataWarning, stacklevel=2)
        if dist.is_main():
            log(f"evaluating {saved.checkpoint} on {len(test_set)} test images of "
                f"{cfg.data.root} (pixel metrics at {cfg.eval.size} px)")
        results = evaluate(model, test_set, cfg, target, examples=cfg.eval.report_images)
        out = Path(out_dir) if out_dir else saved.run_dir / "test"
        if dist.is_main():
            write_report(out, results, saved.epoch, saved.history, test_set,
                         results.get("examples"), train_loss=saved.train_loss, log=log)
            if save_thresholds:
                record = read_run(saved.checkpoint)
                record.thresholds = {**results["thresholds"],
                                     "source": f"mtad test on {cfg.data.root}",
                                     "epoch": record.epoch}
                save_run(record, saved.checkpoint)
                log(f"thresholds saved in {saved.checkpoint}: image {record.thresholds['image']}, "
                    f"pixel {record.thresholds['pixel']} (pooled; per class too)")
        dist.barrier()
    finally:
        dist.shutdown()
    return results
