"""Training: one model for all classes, with checkpoints that make a stopped run
resumable to exactly the weights an uninterrupted run would have reached.

Read top to bottom (nanoGPT's train.py is the model): `get_lr` is the schedule, a
function of the step; `training_step` is one AdamW step (the trainer, the tests and
benchmarks/train_step.py all take it); `RunWriter` writes the run folder; `train`
opens (or resumes) a run and `_train` narrates it block by block: data, model and
optimiser, resume, the writer, then the epochs (one pass over the training images,
a checkpoint, an evaluation when due, the checkpoint again), then the end.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtad.config import ConfigError, RunConfig, config_from_dict, save_config
from mtad.data import open_split
from mtad.engine import distributed as dist
from mtad.engine.evaluate import evaluate
from mtad.models import create_model
from mtad.report.page import write_report
from mtad.runfile import (LEGACY_NECK_BIASES, RUN_FORMAT, CheckpointError, RunFile,
                          checkpoint_path, pick_device, read_run, restore_model, run_dir_of,
                          save_run)


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite (on any process)."""


class _LossStep(nn.Module):
    """What DDP wraps: forward returns the training loss, so gradients sync."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.loss(images)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be reproducible; set before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every RNG a training step may draw from, as plain values (a run file's ``rng``)."""
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
    """Restore what `rng_state` returned (CUDA's only where a GPU is present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's shuffled batches for one epoch: a permutation drawn from
    (seed, epoch) alone, padded to a multiple of the world size and dealt out
    as DistributedSampler does, so resuming replays the same order."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    world = dist.world_size()
    order += order[: (-len(order)) % world]
    mine = order[dist.rank()::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """len(epoch_batches(...)) without drawing a permutation."""
    return math.ceil(math.ceil(n / dist.world_size()) / batch_size)


# What a run writes before its first checkpoint: a folder holding only these (and
# no last.pt) is a run that stopped early, and a new run may start in it.
RUN_START_FILES = {"config.yaml", "tensorboard"}


class EpochBatches:
    """Batch sampler giving `epoch_batches` of the epoch last set with `set_epoch`.

    One sampler and one DataLoader serve the whole run, so that the loader's
    worker processes persist across epochs instead of starting anew each epoch
    (about 2 s per epoch on 2 CPU cores).
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_batches(self.n, self.batch_size, self.seed, self.epoch))

    def __len__(self) -> int:
        return steps_per_epoch(self.n, self.batch_size)


def get_lr(step: int, lr: float, decay_step: int, decay_factor: float) -> float:
    """The learning rate of global step `step` (0-based): `lr`, times `decay_factor`
    from `decay_step` on (the official recipe: one x0.1 step at 80 % of all steps).

    A function of the step alone, so a resumed run continues the schedule from its
    step count; ``lr * 1.0`` and ``lr * decay_factor`` are the very floats the
    LambdaLR scheduler of runs before issue 18 set, so their resumes stay exact."""
    return lr * (1.0 if step < decay_step else decay_factor)


def training_step(loss_fn, optimizer, scaler, images: torch.Tensor, lr: float,
                  clip: float = math.inf, amp: str = "none") -> tuple[float, float]:
    """One AdamW step, as the trainer takes it; returns (loss, gradient norm) of the
    step before the update, each the mean over processes.

    `loss_fn` maps the batch (B x 3 x S x S, ImageNet-normalised) to the scalar training
    loss (the model's ``loss``, or its DDP wrapper); `optimizer` steps every parameter
    it holds at learning rate `lr`, after clipping their gradient norm at `clip`;
    `scaler` (`torch.amp.GradScaler`, enabled for fp16) scales the loss and skips the
    update on an overflow; `amp` is the autocast precision (none | bf16 | fp16).

    Raises:
        TrainingDiverged: a non-finite loss, or a non-finite gradient norm without
            fp16 (with fp16 the scaler skips that update and lowers its scale).
            Every process raises together (they share the reduced values).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    with dist.autocast(images.device, amp):
        loss = loss_fn(images)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    # One host sync per step: loss and gradient norm together, summed over processes,
    # so that every rank sees the same numbers and, on a non-finite value, all ranks
    # stop together (no rank left waiting).
    stats = dist.all_reduce_sum(torch.stack([loss.detach().float(), norm.float()]))
    loss_value, norm_value = (v / dist.world_size() for v in stats.tolist())
    if not math.isfinite(loss_value):
        raise TrainingDiverged(f"loss became {loss_value}")
    if not math.isfinite(norm_value) and not scaler.is_enabled():
        raise TrainingDiverged(f"gradient norm became {norm_value}")
    scaler.step(optimizer)  # with fp16, skips the step on overflow
    scaler.update()
    return loss_value, norm_value


class RunWriter:
    """Everything training writes into the run folder, from the main process only (on
    the others each call does nothing, but `checkpoint` still waits for the main one).

    At the start config.yaml and tensorboard/; after every epoch and evaluation last.pt
    (`mtad.runfile.save_run`, atomic: a crash mid-write leaves the previous one whole);
    after each evaluation the report (results.json, results.md, report.html); at the
    end history.json. Loss, learning rate and test metrics go to TensorBoard.
    """

    def __init__(self, run_dir: Path, cfg: RunConfig, main: bool, log=print):
        self.run_dir, self.main, self.log, self.tensorboard = run_dir, main, log, None
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)

    def checkpoint(self, record: RunFile) -> None:
        if self.main:
            save_run(record, self.run_dir / "last.pt")
        dist.barrier()

    def evaluation(self, results: dict, epoch: int, history: list, train_loss: list,
                   test_set=None) -> None:
        """An evaluation's test metrics and report; `test_set` (the last one's) adds
        the example images."""
        if not self.main:
            return
        for key, value in results["mean"].items():
            if value is not None:
                self.scalar(f"test/{key}", value, epoch)
        write_report(self.run_dir, results, epoch, history, test_set,
                     results.get("examples") if test_set is not None else None,
                     train_loss=train_loss, log=self.log)

    def close(self, history: list, train_loss: list) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            (self.run_dir / "history.json").write_text(json.dumps(
                {"evaluations": history, "train_loss": train_loss}))


def check_splits(cfg: RunConfig, log=print):
    """Open both splits and check every file's header now (every pixel too with
    ``data.on_error=skip``), before the first step: a wrong-size mask must not cost a
    training run (raises DataError naming it, or skips it with a warning)."""
    if not cfg.data.root:
        raise ConfigError("data.root: not set; pass data.root=/path/to/dataset")
    train_set = open_split(cfg.data, "train")
    test_set = open_split(cfg.data, "test", mask_size=cfg.eval.size)
    for split in (train_set, test_set):
        # Headers always; with on_error=skip also every pixel, so that a truncated
        # file is skipped now rather than stopping a training step later.
        note = split.validate(decode=cfg.data.on_error == "skip").orientation_note()
        if note and dist.is_main():
            log(f"note: {split.split} split: {note}")
    return train_set, test_set


def train(cfg: RunConfig | None, resume: str | Path | None = None, log=print) -> Path:
    """Train (or resume) a run; returns its folder.

    Raises:
        ConfigError, DataError: bad config or data, found before the first step.
        FileExistsError: the output folder already holds a run (resume it instead),
            or files that are not a run's.
        TrainingDiverged: the loss or gradients became non-finite; the last good
            checkpoint is kept.
    """
    # -- The run folder: a new run never overwrites an old one; a resumed run
    #    takes its saved config, so it continues exactly as it started.
    ckpt = None
    if resume is not None:
        ckpt = read_run(resume)
        run_dir = run_dir_of(resume)
        if not ckpt.resumable:
            raise FileExistsError(f"{run_dir} holds a model without its training state (one "
                                  "made by mtad convert); it cannot be resumed: train a new run")
        cfg = config_from_dict(ckpt.config)
    else:
        run_dir = Path(cfg.train.out_dir)
        if (run_dir / "last.pt").exists():
            raise FileExistsError(
                f"{run_dir} already holds a run (last.pt); resume it with --resume {run_dir} "
                f"or choose another train.out_dir")
        # A folder of someone else's files is not ours to write into; what a run
        # that stopped before its first checkpoint left (config.yaml, tensorboard/) is.
        others = sorted(p.name for p in run_dir.iterdir()
                        if p.name not in RUN_START_FILES) if run_dir.is_dir() else []
        if others:
            raise FileExistsError(
                f"{run_dir} is not empty and holds no run ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}); choose another train.out_dir")
    device = pick_device(cfg.train.device)
    distributed = dist.init_from_env(device)
    try:
        return _train(cfg, ckpt, run_dir, device, distributed, log)
    finally:
        dist.shutdown()


def _train(cfg: RunConfig, ckpt: RunFile | None, run_dir: Path, device: torch.device,
           distributed: bool, log) -> Path:
    main = dist.is_main()
    seed_everything(cfg.train.seed, cfg.train.deterministic)

    # -- Data: both splits listed and every header checked before any training.
    train_set, test_set = check_splits(cfg, log)

    # -- Model, optimiser, schedule: AdamW with one x0.1 step at decay_at of all
    #    iterations (the official recipe); the encoder is frozen inside MTAD.
    # A resumed run keeps its run format (and so its map scale and thresholds' meaning);
    # so does a new run that starts from another run's weights (train.init_from: mtad
    # finetune), whose optimizer, schedule and epochs start anew.
    start, start_file = ckpt, run_dir / "last.pt"
    if ckpt is None and cfg.train.init_from:
        start_file = checkpoint_path(cfg.train.init_from)
        start = read_run(start_file)
    fmt = RUN_FORMAT if start is None else start.run_format
    if start is None:
        model = create_model("mtad", **cfg.model.to_dict()).to(device)
    else:
        model = restore_model(start, start_file)[1].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    n_steps = steps_per_epoch(len(train_set), cfg.data.batch_size)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    # -- Resume: every state that influences the next step comes back, RNGs too (the
    #    learning rate is a function of the step: get_lr).
    state = {"epoch": 0, "history": [], "train_loss": [], "thresholds": None, "elapsed": 0.0}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer if fmt == RUN_FORMAT else
                                  legacy_optimizer_state(ckpt.optimizer, model, run_dir))
        scaler.load_state_dict(ckpt.scaler)
        state.update(epoch=ckpt.epoch, history=ckpt.history, train_loss=ckpt.train_loss,
                     thresholds=ckpt.thresholds, elapsed=ckpt.elapsed)
        set_rng_state(ckpt.rng)
    step_module = _LossStep(model)
    if distributed:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)

    # -- The run folder's writer (config.yaml and TensorBoard now; checkpoints, the
    #    report and history.json as they come).
    writer = RunWriter(run_dir, cfg, main, log)
    if main:
        log(f"training on {len(train_set)} images of {len(train_set.classes)} classes, "
            f"{n_steps} steps/epoch x {cfg.train.epochs} epochs, device {device}"
            + (f", {dist.world_size()} processes" if distributed else "")
            + (f", resumed at epoch {state['epoch']}" if state["epoch"] else "")
            + (f", starting from the weights of {cfg.train.init_from}"
               if cfg.train.init_from and ckpt is None else ""))
        if state["epoch"] >= cfg.train.epochs:
            log(f"the run is already complete ({state['epoch']} of {cfg.train.epochs} epochs); "
                "nothing to train")

    def checkpoint(epoch: int) -> None:
        writer.checkpoint(RunFile(
            model=model.state_dict(), config=cfg.to_dict(), epoch=epoch,
            class_names=list(train_set.classes), thresholds=state["thresholds"],
            history=state["history"], train_loss=state["train_loss"], elapsed=state["elapsed"],
            run_format=fmt, optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
            rng=rng_state()))

    # One loader for the run: its workers persist from epoch to epoch. It draws its
    # workers' seeds from a generator of its own, so the global RNG (drop path) runs
    # the same with or without workers, and a resumed run continues it exactly.
    batches = EpochBatches(len(train_set), cfg.data.batch_size, cfg.train.seed)
    loader = DataLoader(train_set, num_workers=cfg.data.num_workers, batch_sampler=batches,
                        persistent_workers=cfg.data.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    model.train()
    final_scores = None            # the last evaluation's image scores (for calibration)
    for epoch in range(state["epoch"], cfg.train.epochs):
        # -- One pass over the training images: one AdamW step per batch.
        started = time.time()
        batches.set_epoch(epoch)
        mean_loss = run_epoch(step_module, optimizer, scaler, loader, device, epoch, cfg,
                              writer, state["train_loss"])
        state["elapsed"] += time.time() - started
        if main:
            log(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {mean_loss:.4f}  "
                f"{time.time() - started:.1f}s")
        dist.sync_buffers(model)  # the checkpoint and every evaluation shard use rank 0's

        # -- Checkpoint first, so that a failing evaluation never costs the epoch.
        checkpoint(epoch + 1)
        last = epoch + 1 == cfg.train.epochs
        if not (last or (cfg.train.eval_every > 0 and (epoch + 1) % cfg.train.eval_every == 0)):
            continue

        # -- Evaluate: exact metrics per class, F1-optimal thresholds (per class and
        #    pooled) for prediction; then the checkpoint again, now holding them.
        results = evaluate(model, test_set, cfg, device,
                           examples=cfg.eval.report_images if last else 0)
        state["history"].append({"epoch": epoch + 1, "elapsed": round(state["elapsed"], 1),
                                 "mean": results["mean"], "classes": results["classes"]})
        state["thresholds"] = {**results["thresholds"], "source": "test split", "epoch": epoch + 1}
        if last:
            final_scores = results.get("image_scores") or {}
        writer.evaluation(results, epoch + 1, state["history"], state["train_loss"],
                          test_set if last else None)
        checkpoint(epoch + 1)

    # -- The end: history.json; a run whose test split had no defect calibrates on its
    #    good test images.
    writer.close(state["history"], state["train_loss"])
    if main and final_scores is not None and (state.get("thresholds") or {}).get("image") is None:
        calibrate_after_training(run_dir, final_scores, log)
    return run_dir


def calibrate_after_training(run_dir: Path, image_scores: dict, log=print):
    """A run whose test split has no defective image: calibrate on its good test images
    (never trained on) at the default target when every class has enough of them;
    otherwise say that `mtad calibrate` is next (as the last line). Returns the
    calibration or None."""
    from mtad.calibration import CalibrationStore, Thresholds, calibrate_good, images_needed
    from mtad.files import file_sha256

    alpha, confidence = 0.01, 0.95
    need = images_needed(alpha, confidence)
    good = {name: v.get("normal") or [] for name, v in image_scores.items()}
    short = {name: len(s) for name, s in good.items() if len(s) < need}
    if not good or short:
        few = ", ".join(f"{n} {k}" for n, k in short.items()) or "none"
        log(f"no image threshold: the test split has no defective image, and too few unseen "
            f"good images to calibrate on ({few}; {need} per class give a false-reject rate of "
            f"{alpha:g} at {confidence:g} confidence). Next: mtad calibrate {run_dir} --good DIR")
        return None
    sha = file_sha256(run_dir / "last.pt")
    made = calibrate_good(good, alpha, confidence, source="the run's test split (good images, "
                          "not trained on)", checkpoint_sha256=sha,
                          previous=Thresholds.from_legacy(None))
    made = CalibrationStore(run_dir, sha).add(made)
    log(f"no defective test image: calibrated on the good test images "
        f"({', '.join(f'{n} {len(s)}' for n, s in good.items())}) for a false-reject rate "
        f"<= {alpha:g} at {confidence:g} confidence: calibration v{made.version} in "
        f"{run_dir / 'calibration.json'}")
    return made


def run_epoch(step_module, optimizer, scaler, loader, device: torch.device, epoch: int,
              cfg: RunConfig, writer: RunWriter, train_loss: list) -> float:
    """One epoch of `training_step`s over `loader` (already set to this epoch), at the
    rates of `get_lr` (one x``optim.decay_factor`` step at ``optim.decay_at`` of all the
    run's steps); returns the mean loss. Appends [global step, loss] to `train_loss` (the
    mean over processes, as logged), and both to TensorBoard with the rate.

    Raises:
        TrainingDiverged: as `training_step`, saying where and which checkpoint is kept.
    """
    o, n_steps = cfg.optim, len(loader)
    decay_step = int(o.decay_at * cfg.train.epochs * n_steps)
    clip = o.grad_clip if o.grad_clip > 0 else math.inf
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
               disable=not dist.is_main())
    running = 0.0
    for step, batch in enumerate(bar):
        global_step = epoch * n_steps + step
        images = batch["image"].to(device, non_blocking=True)
        try:
            loss, _ = training_step(step_module, optimizer, scaler, images,
                                    get_lr(global_step, o.lr, decay_step, o.decay_factor),
                                    clip, cfg.train.amp)
        except TrainingDiverged as exc:
            raise TrainingDiverged(
                f"{exc} at epoch {epoch + 1}, step {step + 1}; the last good checkpoint is "
                f"{writer.run_dir / 'last.pt'} (epoch {epoch})") from None
        running += loss
        train_loss.append([global_step, round(loss, 6)])
        bar.set_postfix(loss=f"{loss:.4f}")
        writer.scalar("train/loss", loss, global_step)
        # the rate of the next step (what the LambdaLR of runs before issue 18 logged)
        writer.scalar("train/lr", get_lr(global_step + 1, o.lr, decay_step, o.decay_factor),
                      global_step)
    return running / max(1, n_steps)
