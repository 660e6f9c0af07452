"""Training: one model for all classes, with checkpoints that make a stopped run
resumable to exactly the weights an uninterrupted run would have reached.

Read top to bottom: `train` opens (or resumes) a run, checks the data, builds the
model and optimiser, then loops over epochs; `run_epoch` is one pass over the
training images; evaluation and checkpoints happen between epochs.
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
from mtad.engine.checkpoint import (RUN_FORMAT, checkpoint_path, legacy_optimizer_state,
                                    load_checkpoint, restore_model, rng_state, run_dir_of,
                                    run_format, save_atomic, set_rng_state)
from mtad.engine.evaluate import evaluate
from mtad.models import MTAD
from mtad.models.encoder import check_encoder
from mtad.report.page import write_report


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


def learning_rate_factor(decay_step: int, factor: float):
    return lambda step: 1.0 if step < decay_step else factor


def check_splits(cfg: RunConfig, log=print):
    """Open both splits and check every file's header now (every pixel too with
    ``data.on_error=skip``), before the first step: a wrong-size mask must not cost a
    training run (raises DataError naming it, or skips it with a warning)."""
    if not cfg.data.root:
        raise ConfigError("data.root: not set; pass data.root=/path/to/dataset")
    train_set = open_split(cfg.data, "train")
    test_set = open_split(cfg.data, "test", mask_size=cfg.eval.mask_size)
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
        ckpt = load_checkpoint(resume)
        run_dir = run_dir_of(resume)
        if "optimizer" not in ckpt:
            raise FileExistsError(f"{run_dir} holds a model without its training state (one "
                                  "made by mtad convert); it cannot be resumed: train a new run")
        cfg = config_from_dict(ckpt["config"])
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
    check_encoder(cfg.model.encoder)  # what the config cannot check alone, before any data is read
    device = dist.pick_device(cfg.train.device)
    distributed = dist.init_from_env(device)
    try:
        return _train(cfg, ckpt, run_dir, device, distributed, log)
    finally:
        dist.shutdown()


def _train(cfg: RunConfig, ckpt: dict | None, run_dir: Path, device: torch.device,
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
        start = load_checkpoint(start_file)
    fmt = RUN_FORMAT if start is None else run_format(start, start_file)
    if start is None:
        model = MTAD(cfg.model).to(device)
    else:
        model = restore_model(start, start_file)[1].to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    n_steps = steps_per_epoch(len(train_set), cfg.data.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, learning_rate_factor(int(o.decay_at * cfg.train.epochs * n_steps), o.decay_factor))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    # -- Resume: every state that influences the next step comes back, RNGs too.
    state = {"epoch": 0, "history": [], "train_loss": [], "thresholds": None, "elapsed": 0.0}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"] if fmt == RUN_FORMAT else
                                  legacy_optimizer_state(ckpt["optimizer"], model, run_dir))
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update(epoch=ckpt["epoch"], history=list(ckpt.get("history", [])),
                     train_loss=list(ckpt.get("train_loss", [])),
                     thresholds=ckpt.get("thresholds"), elapsed=float(ckpt.get("elapsed", 0.0)))
        set_rng_state(ckpt["rng"])
    step_module = _LossStep(model)
    if distributed:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
        log(f"training on {len(train_set)} images of {len(train_set.classes)} classes, "
            f"{n_steps} steps/epoch x {cfg.train.epochs} epochs, device {device}"
            + (f", {dist.world_size()} processes" if distributed else "")
            + (f", resumed at epoch {state['epoch']}" if state["epoch"] else "")
            + (f", starting from the weights of {cfg.train.init_from}"
               if cfg.train.init_from and ckpt is None else ""))
        if state["epoch"] >= cfg.train.epochs:
            log(f"the run is already complete ({state['epoch']} of {cfg.train.epochs} epochs); "
                "nothing to train")

    def save(epoch: int) -> None:
        # Atomic: a crash mid-write leaves the previous last.pt whole.
        if main:
            payload = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "config": cfg.to_dict(), "class_names": list(train_set.classes),
                "history": state["history"], "train_loss": state["train_loss"],
                "elapsed": state["elapsed"], "rng": rng_state(), "run_format": fmt,
            }
            if state["thresholds"] is not None:
                payload["thresholds"] = state["thresholds"]
            save_atomic(payload, run_dir / "last.pt")
        dist.barrier()

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
        # -- One pass over the training images.
        started = time.time()
        batches.set_epoch(epoch)
        mean_loss = run_epoch(step_module, params, optimizer, scheduler, scaler, loader, cfg,
                              epoch, n_steps, device, run_dir, state["train_loss"], writer)
        state["elapsed"] += time.time() - started
        if main:
            log(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {mean_loss:.4f}  "
                f"{time.time() - started:.1f}s")
        dist.sync_buffers(model)  # the checkpoint and every evaluation shard use rank 0's

        # -- Checkpoint first, so that a failing evaluation never costs the epoch.
        save(epoch + 1)
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
        if main:
            for key, value in results["mean"].items():
                if value is not None:
                    writer.add_scalar(f"test/{key}", value, epoch + 1)
            write_report(run_dir, results, epoch + 1, state["history"],
                         test_set if last else None, results.get("examples") if last else None,
                         train_loss=state["train_loss"], log=log)
        save(epoch + 1)
    if writer is not None:
        writer.close()
        (run_dir / "history.json").write_text(json.dumps(
            {"evaluations": state["history"], "train_loss": state["train_loss"]}))
        if final_scores is not None and (state.get("thresholds") or {}).get("image") is None:
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


def run_epoch(step_module, params, optimizer, scheduler, scaler, loader, cfg: RunConfig,
              epoch: int, n_steps: int, device: torch.device, run_dir: Path,
              train_loss: list, writer) -> float:
    """One epoch of AdamW steps over `loader` (already set to this epoch); returns
    the mean loss. Appends [step, loss] to `train_loss` (the mean over processes,
    as logged)."""
    main = dist.is_main()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, disable=not main)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    running = 0.0
    for step, batch in enumerate(bar):
        images = batch["image"].to(device, non_blocking=True)
        with dist.autocast(device, cfg.train.amp):
            loss = step_module(images)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, clip)

        # One host sync per step: loss and gradient norm together, summed over
        # processes, so that every rank sees the same numbers and, on a
        # non-finite value, all ranks stop together (no rank left waiting).
        stats = dist.all_reduce_sum(torch.stack([loss.detach().float(), norm.float()]))
        loss_value, norm_value = (v / dist.world_size() for v in stats.tolist())
        where = (f"at epoch {epoch + 1}, step {step + 1}; the last good checkpoint is "
                 f"{run_dir / 'last.pt'} (epoch {epoch})")
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"loss became {loss_value} {where}")
        if not math.isfinite(norm_value) and not scaler.is_enabled():
            raise TrainingDiverged(f"gradient norm became {norm_value} {where}")
        scaler.step(optimizer)  # with fp16, skips the step on overflow
        scaler.update()
        scheduler.step()

        running += loss_value
        global_step = epoch * n_steps + step
        train_loss.append([global_step, round(loss_value, 6)])
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if writer is not None:
            writer.add_scalar("train/loss", loss_value, global_step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
    return running / max(1, n_steps)
