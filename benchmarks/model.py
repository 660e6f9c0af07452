"""MTAD inference throughput on this machine, side by side in one run.

Prints images/s at 256 x 256, batch 8, in fp32 and under bf16 autocast, for the
official model (ResNet34) and the demo model (EfficientNet-Lite0), the achieved
GFLOP/s (FLOPs from mtad.models.complexity), and that as a fraction of a large
fp32 / bf16 matmul's GFLOP/s measured in the same run.

    .venv/bin/python benchmarks/model.py [--quick] [--device cuda]
"""
from __future__ import annotations

import argparse
import time

import torch

from mtad.models import MTAD
from mtad.models.complexity import count_flops


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 1024) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, 5, device)
    return 2 * n ** 3 / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, demo model only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = 2 if args.quick else 4
    peak = {"fp32": matmul_gflops(torch.float32, device), "bf16": matmul_gflops(torch.bfloat16, device)}
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"large matmul (1024^3): fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
    precisions = ["fp32", "bf16"]
    if peak["bf16"] < 0.1 * peak["fp32"]:
        # This torch build has no fast bf16 kernel for this CPU (e.g. torch reports AVX2 only):
        # a bf16 forward would take minutes and say nothing about MTAD.
        precisions = ["fp32"]
        print("bf16 rows skipped: bf16 matmul here is under a tenth of fp32's speed")
    print()
    models = [("demo (efficientnet_lite0)", dict(encoder="efficientnet_lite0"))]
    if not args.quick:
        models.insert(0, ("official (resnet34)", dict(encoder="resnet34")))
    header = f"{'model':28s}{'precision':>10s}{'images/s':>10s}{'GFLOP/img':>11s}{'GFLOP/s':>9s}{'of matmul':>11s}"
    print(header)
    print("-" * len(header))
    for name, kwargs in models:
        torch.manual_seed(0)
        model = MTAD(**kwargs).eval()
        counts = count_flops(model, args.size)
        flops = sum(counts["counted"].values()) + counts["scan"]
        model = model.to(device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        for precision in precisions:
            dtype = torch.bfloat16 if precision == "bf16" else None

            def run():
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    model.predict(x)

            seconds = timed(run, repeats, device)
            rate = args.batch / seconds
            achieved = rate * flops / 1e9
            print(f"{name:28s}{precision:>10s}{rate:>10.2f}{flops / 1e9:>11.2f}{achieved:>9.1f}"
                  f"{achieved / peak[precision]:>10.1%}")


if __name__ == "__main__":
    main()
