"""Training: one model for all classes, with checkpoints that make a stopped run
resumable to exactly the weights an uninterrupted run would have reached."""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtad.config import RunConfig, config_from_dict, save_config
from mtad.data import open_dataset
from mtad.engine import distributed as dist
from mtad.engine.checkpoint import (load_checkpoint, rng_state, run_dir_of, save_atomic,
                                   set_rng_state)
from mtad.engine.evaluate import autocast, evaluate
from mtad.models import MTAD
from mtad.report import write_report


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite."""


class _LossStep(nn.Module):
    """What DDP wraps: forward returns the training loss, so gradients sync."""

    def __init__(self, model: MTAD):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.loss(images)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def open_split(cfg: RunConfig, split: str):
    d = cfg.data
    if not d.root:
        raise ValueError("data.root is not set: pass data.root=/path/to/dataset")
    return open_dataset(d.root, layout=d.layout, split=split,
                        classes=[str(c) for c in d.classes] if d.classes else None,
                        image_size=d.image_size, mask_threshold=d.mask_threshold,
                        on_error=d.on_error, validate=d.on_error == "skip", **d.options)


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


def learning_rate_factor(decay_step: int, factor: float):
    return lambda step: 1.0 if step < decay_step else factor


def summarise(results: dict) -> dict:
    """The parts of evaluation results that go into results.json."""
    return {k: v for k, v in results.items() if k != "examples"}


def train(cfg: RunConfig | None, resume: str | Path | None = None, log=print) -> Path:
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = config_from_dict(ckpt["config"])
        run_dir = run_dir_of(resume)
    else:
        run_dir = Path(cfg.train.out_dir)
        if (run_dir / "last.pt").exists():
            raise FileExistsError(
                f"{run_dir} already holds a run (last.pt); resume it with --resume {run_dir} "
                f"or choose another train.out_dir")
    device = dist.pick_device(cfg.train.device)
    distributed = dist.init_from_env(device)
    main = dist.is_main()
    seed_everything(cfg.train.seed)

    train_set, test_set = open_split(cfg, "train"), open_split(cfg, "test")
    if len(train_set) == 0:
        raise ValueError(f"no training images under {cfg.data.root}")
    model = MTAD(cfg.model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    steps_per_epoch = len(epoch_batches(len(train_set), cfg.data.batch_size, 0, 0))
    total_steps = cfg.train.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, learning_rate_factor(int(o.decay_at * total_steps), o.decay_factor))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    start_epoch, history, thresholds = 0, [], None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, history = ckpt["epoch"], list(ckpt.get("history", []))
        thresholds = ckpt.get("thresholds")
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
            f"{steps_per_epoch} steps/epoch x {cfg.train.epochs} epochs, device {device}"
            + (f", {dist.world_size()} processes" if distributed else "")
            + (f", resumed at epoch {start_epoch}" if start_epoch else ""))

    clip = o.grad_clip if o.grad_clip > 0 else math.inf
    model.train()
    for epoch in range(start_epoch, cfg.train.epochs):
        loader = DataLoader(train_set, num_workers=cfg.data.num_workers,
                            batch_sampler=epoch_batches(len(train_set), cfg.data.batch_size,
                                                        cfg.train.seed, epoch))
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   disable=not main)
        running, started = 0.0, time.time()
        for step, batch in enumerate(bar):
            images = batch["image"].to(device, non_blocking=True)
            with autocast(device, cfg.train.amp):
                loss = step_module(images)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is {run_dir / 'last.pt'} (epoch {epoch})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            if not torch.isfinite(norm) and not scaler.is_enabled():
                raise TrainingDiverged(
                    f"gradient norm became {norm.item()} at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is {run_dir / 'last.pt'} (epoch {epoch})")
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running += loss.item()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if writer is not None:
                global_step = epoch * steps_per_epoch + step
                writer.add_scalar("train/loss", loss.item(), global_step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
        mean_loss = running / max(1, steps_per_epoch)
        if main:
            log(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {mean_loss:.4f}  "
                f"{time.time() - started:.1f}s")
        last = epoch + 1 == cfg.train.epochs
        dist.sync_buffers(model)  # the checkpoint and every evaluation shard use rank 0's
        if last or (cfg.train.eval_every > 0 and (epoch + 1) % cfg.train.eval_every == 0):
            results = evaluate(model, test_set, device, cfg.data.test_batch_size,
                               cfg.data.num_workers, cfg.train.amp, cfg.eval.streaming,
                               cfg.eval.bins, examples=cfg.eval.report_images if last else 0)
            history.append({"epoch": epoch + 1, "mean": results["mean"]})
            thresholds = {**results["thresholds"], "source": "test split", "epoch": epoch + 1}
            if main:
                for key, value in results["mean"].items():
                    if value is not None:
                        writer.add_scalar(f"test/{key}", value, epoch + 1)
                write_report(run_dir, summarise(results), epoch + 1, history,
                             test_set if last else None, results.get("examples") if last else None,
                             log=log)
        if main:
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "config": cfg.to_dict(), "history": history,
                "rng": rng_state(),
            }
            if thresholds is not None:
                state["thresholds"] = thresholds
            save_atomic(state, run_dir / "last.pt")
        dist.barrier()
    if writer is not None:
        writer.close()
        (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    return run_dir
