"""Checkpoints: written atomically, read with `weights_only=True`.

A checkpoint holds only tensors and plain Python values (the config as a dict,
RNG states as lists), so that loading it never executes pickled code.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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


def save_atomic(obj, path: str | Path) -> None:
    """Write to a temporary file beside `path`, then rename over it: a crash
    mid-write leaves the previous checkpoint intact."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def run_dir_of(path: str | Path) -> Path:
    """The run folder of a checkpoint given as a run folder or as its file."""
    return checkpoint_path(path).parent


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint given as a file or as a run folder (its last.pt)."""
    path = checkpoint_path(path)
    from mtad.models.encoder import read_torch_file

    ckpt = read_torch_file(path, "an mtad checkpoint", CheckpointError)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not an mtad checkpoint (no 'model' and 'config' entries)")
    return ckpt


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


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Open a run, named by its folder or its checkpoint file: the one way every
    command (test, predict, export, serve, resume) reads a trained model.

    The architecture comes from the checkpoint's config; every weight, the
    encoder's too, from its state dict (nothing is downloaded).

    Raises:
        CheckpointError: no checkpoint there, a file that is not an mtad
            checkpoint, or weights that do not fit the saved architecture.
    """
    file = checkpoint_path(path)
    ckpt = load_checkpoint(file)
    cfg, model = restore_model(ckpt, file)
    model.to(device).eval()
    thresholds = ckpt.get("thresholds")
    names = list(ckpt.get("class_names") or (thresholds or {}).get("classes", {}) or [])
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
               thresholds=thresholds, class_names=names, epoch=int(ckpt.get("epoch", 0)),
               history=list(ckpt.get("history", [])), train_loss=list(ckpt.get("train_loss", [])),
               results=results)


def run_format(ckpt: dict, file) -> int:
    """The checkpoint's run format (see RUN_FORMAT); 1 when it records none.

    Raises:
        CheckpointError: a format this mtad does not know (written by a newer one).
    """
    fmt = ckpt.get("run_format", 1)
    if fmt not in (1, RUN_FORMAT):
        raise CheckpointError(f"{file}: run format {fmt!r} is not one this mtad reads "
                              f"(1 to {RUN_FORMAT}); it was written by a newer mtad")
    return fmt


def restore_model(ckpt: dict, file):
    """(RunConfig, MTAD) of a checkpoint read by load_checkpoint: the architecture from
    its config, every weight (the encoder's too) from its state dict, loaded strictly,
    and the anomaly-map scale of its run format.

    Raises:
        CheckpointError: an invalid saved config, or weights that do not fit it.
    """
    from mtad.config import ConfigError, config_from_dict
    from mtad.models import MTAD

    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{file}: its saved config is not valid here: {exc}") from exc
    model = MTAD(cfg.model, weights="none")  # the checkpoint holds every weight
    state = ckpt["model"]
    if run_format(ckpt, file) == 1:
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


def legacy_optimizer_state(state: dict, model, file) -> dict:
    """A run-format-1 optimizer state, renumbered for `model`'s trainable parameters
    (which now include LEGACY_NECK_BIASES, fresh: their moments start at zero)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    old = [n for n in names if n not in LEGACY_NECK_BIASES]
    groups = state.get("param_groups", [])
    if len(groups) != 1 or len(groups[0]["params"]) != len(old):
        raise CheckpointError(f"{file}: its optimizer state does not fit the model "
                              f"({len(old)} trainable tensors expected in one group)")
    index = {i: names.index(n) for i, n in zip(groups[0]["params"], old)}
    return {"state": {index[i]: v for i, v in state["state"].items()},
            "param_groups": [{**groups[0], "params": list(range(len(names)))}]}


def rng_state() -> dict:
    """Every RNG a training step may draw from, as plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
