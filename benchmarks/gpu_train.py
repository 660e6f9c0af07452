"""Official-model training throughput on one GPU: batch sizes x precisions, images/s and memory.

    python benchmarks/gpu_train.py [--batches 8 16 32] [--precisions fp32 bf16] [--steps 300]
                                   [--seconds 40] [--size 256]
    python benchmarks/gpu_train.py --cpu-smoke      # the same code path on CPU, tiny, seconds

Per (batch, precision) cell: a fresh MTAD() (ResNet34, random weights: throughput does not
depend on them), AdamW (lr 1e-3, weight decay 0.01), gradient clipping 5.0, random
ImageNet-normalised images resident on the device; bf16 is torch.autocast(bfloat16) around
the loss as `train.amp: bf16` does. 5 warm-up steps, then up to --steps timed steps or
--seconds of wall clock, whichever comes first (so the whole matrix fits a short GPU
session). Prints s/step, images/s, achieved GFLOP/s (training FLOPs from
mtad.models.complexity), peak allocated memory (torch.cuda.max_memory_allocated) and the
selective-scan backend in use, and the loss of the first and last step (finite, decreasing).
An out-of-memory cell is reported and skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mtad.models import MTAD  # noqa: E402
from mtad.models.complexity import count_flops  # noqa: E402
from mtad.ops.scan import _resolve_backend  # noqa: E402
from train_step import training_step  # noqa: E402  (benchmarks/, this script's folder)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_cell(model_kwargs, size, batch, precision, device, steps, seconds, gflop):
    torch.manual_seed(0)
    model = MTAD(**model_kwargs).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    images = torch.randn(batch, 3, size, size, device=device,
                         generator=torch.Generator(device=device).manual_seed(1))
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        return training_step(model, params, opt, images, dtype)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    first = float(step())
    for _ in range(4):
        step()
    sync(device)
    start = time.perf_counter()
    done = 0
    while done < steps and (done == 0 or time.perf_counter() - start < seconds):
        loss = step()
        done += 1
        if done % 10 == 0:
            sync(device)
    last = float(loss)
    sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    rate = batch * done / elapsed
    return {"batch": batch, "precision": precision, "steps": done, "s_per_step": elapsed / done,
            "images_per_s": rate, "gflops": rate * gflop, "peak_gib": peak,
            "first_loss": first, "last_loss": last, "finite": math.isfinite(last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per cell at most")
    parser.add_argument("--seconds", type=float, default=40.0, help="timed seconds per cell at most")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny model on CPU, batch 2 at 64 px, 2 steps: checks the code path")
    args = parser.parse_args()
    model_kwargs = dict(encoder="resnet34", weights="none")
    if args.cpu_smoke:
        args.device, args.size, args.batches, args.steps, args.seconds = "cpu", 64, [2], 2, 5
        model_kwargs["depths"] = (1, 1, 1, 1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_train.py: no CUDA device visible (torch.cuda.is_available() is False); "
                 "use --cpu-smoke to check the code path on CPU")
    counts = count_flops(MTAD(**model_kwargs), args.size)
    c = counts["counted"]
    gflop = (c["encoder"] + 3 * (c["neck"] + c["decoder"] + counts["scan"])) / 1e9
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, scan backend "
          f"{_resolve_backend(None, device.type == 'cuda')}, official model "
          f"{'(tiny depths, smoke) ' if args.cpu_smoke else ''}at {args.size} px, "
          f"{gflop:.1f} training GFLOP/image")
    header = (f"{'batch':>6s}{'prec':>6s}{'steps':>7s}{'s/step':>9s}{'img/s':>9s}{'GFLOP/s':>10s}"
              f"{'peak GiB':>10s}{'loss first':>12s}{'loss last':>11s}")
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for precision in args.precisions:
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            print(f"{'':>6s}{'bf16':>6s}  skipped: this GPU has no bf16 support")
            continue
        for batch in args.batches:
            try:
                r = run_cell(model_kwargs, args.size, batch, precision, device, args.steps,
                             args.seconds, gflop)
            except torch.OutOfMemoryError:
                print(f"{batch:>6d}{precision:>6s}  out of memory, skipped", flush=True)
                torch.cuda.empty_cache()
                continue
            rows.append(r)
            print(f"{batch:>6d}{precision:>6s}{r['steps']:>7d}{r['s_per_step']:>9.3f}"
                  f"{r['images_per_s']:>9.1f}{r['gflops']:>10.0f}{r['peak_gib']:>10.2f}"
                  f"{r['first_loss']:>12.4f}{r['last_loss']:>11.4f}", flush=True)
            if not r["finite"]:
                print("  loss is not finite", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if not rows or not all(r["finite"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
