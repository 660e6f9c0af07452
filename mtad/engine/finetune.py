"""Continue a finished run with more good images (`mtad finetune`), as a new run.

The new run is an ordinary run of the trainer (`mtad.engine.train`): its config is
the original's with

* ``train.init_from``: the original checkpoint, whose model weights it starts from;
* ``data.extra_train``: the added folders (any layout's train split, e.g. the
  ``<class>/train/good/`` folders `mtad review export` writes), trained on together
  with the original training images, so the classes it already knew are not forgotten;
* ``train.epochs = N``, evaluated once at the end on the original test split
  (thresholds and report as any run);
* the schedule: a constant learning rate, by default the original's final one
  (``optim.lr x optim.decay_factor``: 5e-5 for the official recipe), with a fresh
  AdamW state. The official schedule ends at that rate; carrying on at it keeps
  the steps as small as the ones the model converged with, where the original
  peak rate would first undo part of that convergence.

The original run folder is only read. The new one can be resumed
(`mtad train --resume NEW_RUN`), tested, exported and served like any run.
"""
from __future__ import annotations

import copy
from pathlib import Path

from mtad.config import apply_overrides, config_from_dict
from mtad.engine.train import train
from mtad.runfile import checkpoint_path, read_run


def finetune_config(run: str | Path, add_good: list[str | Path], epochs: int, out: str | Path,
                    lr: float | None = None, overrides: list[str] = ()):
    """The RunConfig of the fine-tuning run (see the module docstring).

    Raises:
        CheckpointError: ``run`` holds no readable checkpoint.
        FileNotFoundError: an added folder does not exist.
        FileExistsError: ``out`` is the original run's folder.
        ConfigError: ``epochs`` or ``lr`` not positive, or a bad override.
    """
    source = checkpoint_path(run).resolve()
    saved = copy.deepcopy(read_run(source).config)
    out = Path(out)
    if out.resolve() == source.parent:
        raise FileExistsError(f"--out {out} is the run being fine-tuned; the original is never "
                              "modified: name a new folder")
    folders = []
    for folder in add_good:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--add-good {folder}: no such folder")
        folders.append(str(Path(folder).resolve()))
    optim = saved.setdefault("optim", {})
    if lr is None:
        base, factor = float(optim.get("lr", 5e-4)), float(optim.get("decay_factor", 0.1))
        lr = base * factor if factor > 0 else base
    optim.update(lr=float(lr), decay_factor=1.0, decay_at=0.0)   # constant
    saved.setdefault("train", {}).update(out_dir=str(out), epochs=int(epochs),
                                         init_from=str(source), eval_every=0)
    data = saved.setdefault("data", {})
    data["extra_train"] = list(data.get("extra_train") or []) + folders
    return config_from_dict(apply_overrides(saved, list(overrides)))


def finetune(run: str | Path, add_good: list[str | Path], epochs: int, out: str | Path,
             lr: float | None = None, overrides: list[str] = (), log=print) -> Path:
    """Train ``epochs`` more epochs of ``run`` on its training images plus ``add_good``,
    into the new run folder ``out``; returns it. Raises as `finetune_config` and
    `mtad.engine.train.train` (``out`` holding a run or other files is refused)."""
    cfg = finetune_config(run, add_good, epochs, out, lr, overrides)
    log(f"fine-tuning {cfg.train.init_from} for {epochs} epoch(s) at a constant learning rate "
        f"{cfg.optim.lr:g}, adding {', '.join(cfg.data.extra_train)}")
    new_run = train(cfg, log=log)
    recalibrate(Path(cfg.train.init_from).parent, new_run, log)
    return new_run


def recalibrate(original: Path, new_run: Path, log=print):
    """Calibrate ``new_run`` on the held-out good parts the original run's active
    calibration used (same folders, targets and confidence; `mtad calibrate`
    records them), since the fine-tuned model's scores moved. Without such a
    calibration (F1 thresholds, or folders gone) the new run keeps the thresholds
    of its final evaluation, and the last line says that `mtad calibrate` is next.
    A refused calibration (e.g. the calibration folders were added to training)
    says why and leaves the new run as trained. Returns the calibration or None."""
    from mtad.calibration import CalibrationError, CalibrationStore
    from mtad.data.errors import DataError
    from mtad.deploy import open_model
    from mtad.engine.calibrate import calibrate

    try:
        active, why = CalibrationStore(original, None).active(), None
    except CalibrationError as exc:
        active, why = None, str(exc)
    request = active.request if active is not None else {}
    folders = [Path(d) for d in request.get("good") or []]
    if why is not None:
        pass
    elif not folders:
        why = f"{original} has no good-part calibration to repeat"
    elif not all(d.is_dir() for d in folders):
        why = f"the folders of its calibration v{active.version} are gone ({', '.join(map(str, folders))})"
    else:
        log(f"re-calibrating on the good parts of {original}'s calibration v{active.version}: "
            f"{', '.join(map(str, folders))}")
        try:
            return calibrate(open_model(new_run, "cpu"), folders, request.get("class_name"),
                             request.get("false_reject", 0.01), request.get("confidence", 0.95),
                             request.get("ng_false_reject"), log=log)
        except (CalibrationError, DataError) as exc:
            why = f"re-calibration refused: {exc}"
    log(f"{why}; {new_run} has the thresholds of its final evaluation. "
        f"Next: mtad calibrate {new_run} --good DIR")
    return None
