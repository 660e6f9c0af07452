"""The run file (a run folder's last.pt): one typed record, one writer, one reader.

A run file holds only tensors and plain Python values (the config as a dict, RNG
states as lists), written atomically by `save_run` and read with
``weights_only=True`` by `read_run`, so that loading it never executes pickled
code. Every command reaches a run through here: the trainer and `mtad convert`
write one with `save_run`; resume, `mtad info`, the demo, fine-tuning and
``mtad test --save-thresholds`` read its record with `read_run`; test, predict,
export, serve and calibrate open its model with `load_run` (which reads through
`read_run`). This module imports no other part of mtad at import time, so that
`mtad.deploy` can open runs without importing the engine.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from mtad.files import file_sha256, write_atomic


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not hold what is needed."""


RUN_FORMAT = 2
"""What a checkpoint's ``run_format`` entry says about its model (no entry: format 1).

1: mtad before issue 17. The neck's three 1x1 convolutions had no bias (they load
   as zero, the function they were trained with: each is followed by a BatchNorm),
   and the anomaly map was the plain sum of the three scales' 1 - cos maps, 9x the
   official one; such a run keeps that scale, so its saved thresholds keep their
   meaning and it scores as before. Its position embedding (row first) is a saved
   parameter and is used as saved.
2: the authors' network: neck biases, the map divided by 9 as their cal_anomaly_map.
"""
LEGACY_NECK_BIASES = ("neck.lateral2.0.bias", "neck.lateral3.0.bias", "neck.fuse.0.bias")
LEGACY_MAP_DIVISOR = 1.0

TRAINING_STATE = ("optimizer", "scaler", "rng")
"""The record's fields a resume needs and a converted or stripped run lacks."""


@dataclass
class RunFile:
    """What a run file holds (its keys are these fields' names).

    Attributes:
        model: the MTAD state dict, every weight (the encoder's too).
        config: the run's config, as ``RunConfig.to_dict()`` (plain data).
        epoch: epochs completed (0 for a converted or untrained model).
        class_names: the product classes it was trained on (may be empty).
        thresholds: the F1-optimal thresholds of its last evaluation, in
            `mtad.postprocess`'s format ({"image", "pixel", "classes", "source",
            "epoch", ...}), or None when never evaluated.
        history: one {"epoch", "elapsed", "mean", "classes"} entry per evaluation.
        train_loss: [global step, loss] per training step.
        elapsed: seconds spent training (evaluation excluded), summed over resumes.
        run_format: see RUN_FORMAT; a file without the key is format 1.
        source: provenance of a converted run ({"converted_from", "sha256",
            "entry", "code"}), else None.
        optimizer, scaler: the AdamW and GradScaler state dicts; rng: every RNG's
            state (`mtad.engine.train.rng_state`). All three are None in a run that
            cannot be resumed (converted, or stripped).
        scheduler: the LambdaLR state that runs before issue 18 saved; read and
            unused (the learning rate is a function of the step,
            `mtad.engine.train.get_lr`), not written.
    """

    model: dict
    config: dict
    epoch: int = 0
    class_names: list = field(default_factory=list)
    thresholds: dict | None = None
    history: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    elapsed: float = 0.0
    run_format: int = RUN_FORMAT
    source: dict | None = None
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    rng: dict | None = None

    @property
    def resumable(self) -> bool:
        """Whether it holds the training state a resume continues from."""
        return all(getattr(self, name) is not None for name in TRAINING_STATE)

    def to_dict(self) -> dict:
        """The file's contents: every field, those that are None left out."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, obj, file="the checkpoint") -> "RunFile":
        """The record of a file's contents, any run format this mtad reads; entries a
        format lacks take the defaults above (unknown entries are ignored).

        Raises:
            CheckpointError: not a dict with 'model' and 'config' entries, or a run
                format written by a newer mtad.
        """
        if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
            raise CheckpointError(f"{file} is not an mtad checkpoint (no 'model' and 'config' "
                                  "entries)")
        fmt = obj.get("run_format", 1)
        if fmt not in (1, RUN_FORMAT):
            raise CheckpointError(f"{file}: run format {fmt!r} is not one this mtad reads "
                                  f"(1 to {RUN_FORMAT}); it was written by a newer mtad")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in obj.items() if k in known and v is not None}
        record = cls(**{**values, "run_format": fmt})
        record.epoch = int(record.epoch)
        record.elapsed = float(record.elapsed)
        record.class_names, record.history = list(record.class_names), list(record.history)
        record.train_loss = list(record.train_loss)
        return record


def save_run(record: RunFile, path: str | Path) -> None:
    """Write `record` to `path` (a run folder's last.pt): to a temporary file beside
    it, then renamed over it, so a crash mid-write leaves the previous file whole."""
    write_atomic(path, lambda handle: torch.save(record.to_dict(), handle))


def read_run(path: str | Path) -> RunFile:
    """The record of a run file, named by its run folder or by the file itself.

    Raises:
        CheckpointError: no such file, not a torch file, cut short, holding Python
            objects besides tensors, or not an mtad run file (see `RunFile.from_dict`).
    """
    file = checkpoint_path(path)
    return RunFile.from_dict(read_torch_file(file, "an mtad checkpoint", CheckpointError), file)


def read_torch_file(path, what: str, error: type[Exception]):
    """``torch.load(path, weights_only=True)``, with failures as one line of `error`:
    a file torch did not write, a truncated one, or one holding more than tensors
    and plain values (never unpickled: weights_only stays on)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        import zipfile

        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            with open(path, "rb") as f:  # a zip's start without its end (its index): cut short
                cut = f.read(4) == b"PK\x03\x04"
            why = ("an incomplete torch file (cut short, e.g. by an interrupted copy)" if cut
                   else "not a file saved by torch")
        elif "Weights only load failed" in str(exc):
            why = ("it holds Python objects besides tensors and plain values; mtad reads "
                   "such files with weights_only=True and runs no code from them")
        else:
            why = f"a damaged torch file ({type(exc).__name__})"
        raise error(f"{path}: cannot read it as {what}: {why}") from None


def checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file of a run named by its folder or by its file.

    Raises:
        CheckpointError: neither the file nor <folder>/last.pt exists.
    """
    path = Path(path)
    file = path / "last.pt" if path.is_dir() else path
    if not file.is_file():
        where = f"{path} holds no last.pt" if path.is_dir() else f"{path} does not exist"
        raise CheckpointError(f"no checkpoint: {where} (name a run folder or its last.pt)")
    return file


def run_dir_of(path: str | Path) -> Path:
    """The run folder of a checkpoint given as a run folder or as its file."""
    return checkpoint_path(path).parent


def pick_device(name: str = "auto") -> torch.device:
    """auto (this rank's GPU when there is one, else the CPU), cpu, cuda or cuda:N.

    Raises:
        ConfigError: a CUDA device asked for where none is available.
    """
    from mtad.config import ConfigError

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but no CUDA device is available; "
                          f"use cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def restore_model(record: RunFile, file):
    """(RunConfig, MTAD) of a run file's record: the architecture from its config,
    every weight (the encoder's too) from its state dict, loaded strictly, and the
    anomaly-map scale of its run format.

    Raises:
        CheckpointError: an invalid saved config, or weights that do not fit it.
    """
    from mtad.config import ConfigError, config_from_dict
    from mtad.models import create_model

    try:
        cfg = config_from_dict(record.config)
    except ConfigError as exc:
        raise CheckpointError(f"{file}: its saved config is not valid here: {exc}") from exc
    model_cfg = dict(cfg.model.to_dict(), weights="none")  # the checkpoint holds every weight
    model = create_model("mtad", **model_cfg)
    state = record.model
    if record.run_format == 1:
        own = model.state_dict()
        state = {**state, **{k: torch.zeros_like(own[k]) for k in LEGACY_NECK_BIASES
                             if k in own and k not in state}}
        model.map_divisor = LEGACY_MAP_DIVISOR
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{file}: weights do not fit the saved architecture "
                              f"({'; '.join(l.strip() for l in first[:3])})") from None
    return cfg, model


@dataclass
class Run:
    """A trained run, opened for use: what test, predict, export and serve need.

    Attributes:
        run_dir: the run folder (holds config.yaml, last.pt, results.json, ...).
        checkpoint: the checkpoint file that was read.
        config: the run's RunConfig, as saved in the checkpoint.
        model: the trained MTAD, in eval mode, on the requested device.
        thresholds: calibrated thresholds (format: `mtad.postprocess`), or None
            when the run was never evaluated.
        class_names: the product classes it was trained on (may be empty for
            checkpoints written before they were recorded).
        epoch: epochs completed.
        history: one {"epoch", "elapsed", "mean", "classes"} entry per evaluation.
        train_loss: [step, loss] per training step.
        results: the run folder's results.json, or None.
    """

    run_dir: Path
    checkpoint: Path
    config: object
    model: object
    thresholds: dict | None
    class_names: list[str]
    epoch: int
    history: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    results: dict | None = None

    def sha256(self) -> str:
        """SHA-256 of the checkpoint file (hex), for provenance in exports and
        calibrations (computed once)."""
        if getattr(self, "_sha256", None) is None:
            self._sha256 = file_sha256(self.checkpoint)
        return self._sha256

    def active_thresholds(self):
        """The thresholds predictions use (`mtad.calibration.Thresholds`): the active
        version of the run's calibration.json when it was made for this checkpoint,
        else the legacy F1 thresholds last.pt holds."""
        import logging

        from mtad.calibration import model_thresholds

        return model_thresholds(self.run_dir, self.thresholds, self.sha256,
                                logging.getLogger("mtad").warning)


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Open a run, named by its folder or its checkpoint file: the one way every
    command (test, predict, export, serve, calibrate) reads a trained model.

    The architecture comes from the checkpoint's config; every weight, the
    encoder's too, from its state dict (nothing is downloaded).

    Raises:
        CheckpointError: no checkpoint there, a file that is not an mtad
            checkpoint, or weights that do not fit the saved architecture.
    """
    file = checkpoint_path(path)
    record = read_run(file)
    cfg, model = restore_model(record, file)
    model.to(device).eval()
    thresholds = record.thresholds
    names = list(record.class_names or (thresholds or {}).get("classes", {}) or [])
    results_file = file.parent / "results.json"
    results = None
    if results_file.is_file():
        try:
            results = json.loads(results_file.read_text())
        except (OSError, ValueError):
            results = None
    if not names and results:
        names = list(results.get("classes", {}))
    return Run(run_dir=file.parent, checkpoint=file, config=cfg, model=model,
               thresholds=thresholds, class_names=names, epoch=record.epoch,
               history=record.history, train_loss=record.train_loss, results=results)
