"""Training throughput of MTAD on this machine, this code against a baseline git ref, in one run.

    python benchmarks/train_step.py [--baseline main] [--quick] [--steps 3] [--threads N]

For each model (demo: EfficientNet-Lite0, configs/demo.yaml's decoder; official: MTAD()'s
ResNet34 with random weights) and size (128, 256 px), batch 8, one training step is the
trainer's own (`mtad.engine.train.training_step`: forward, loss, GradScaler, backward,
gradient clipping (5.0), the non-finite check, an AdamW step), on fixed random images from
one seed. Each (model, size) cell runs in a fresh subprocess per code version, baseline and
current one right after the other, so machine load hits both alike: the ratio is the result;
absolute images/s move with the load. The baseline is `git archive REF` unpacked into a temp
dir (nothing in the repository or its branches changes) and put first on PYTHONPATH.

Per cell: median s/step of --steps timed steps after one warm-up step (the warm-up also
builds or loads the cpp scan kernel; its time is printed), images/s, the training GFLOP per
image (encoder forward + 3 x (neck + decoder + scan) forward FLOPs from
mtad.models.complexity: backward costs two forwards, the encoder is frozen), the achieved
GFLOP/s, and that as a fraction of an fp32 1024^3 matmul's GFLOP/s measured in the same run
(before and after the cells; the table uses the larger). The last step's loss of both
versions is printed with their relative difference: the same seed and inputs give the same
losses up to rounding. "cpu s/step" is the process's CPU time per step (all its threads):
on a machine shared with other jobs it is steadier than wall time, and with --threads 1 it is
what the step would take alone; its ratio is the second speed-up column.

--quick: the demo model at 128 px only, 2 timed steps (a smoke test, about a minute).

--compile: a third version, the current code with every decoder block wrapped in
torch.compile (inductor, dynamic=False; the cpp scan stays a graph break); its warm-up
column is the compile time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "demo": dict(encoder="efficientnet_lite0", weights="packaged", depths=(3, 4, 6, 3)),
    "official": dict(encoder="resnet34", weights="none"),
}


def training_step(model, params, opt, images, dtype=None) -> float:
    """One training step exactly as mtad's trainer takes it: `mtad.engine.train.training_step`
    of the code on the path (forward and loss under bf16/fp16 autocast when `dtype` is
    given, GradScaler (enabled for fp16), backward, gradient clipping at 5.0 over
    `params`, the non-finite check with its one host sync, the AdamW step) at lr 1e-3.
    A baseline from before that function (issue 18) takes the step its trainer's
    run_epoch took, written out below. Returns the loss. Shared with gpu_train.py."""
    import torch

    amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "none")
    if "mtad_scaler" not in opt.__dict__:   # one scaler per optimiser, as in a run
        opt.mtad_scaler = torch.amp.GradScaler(images.device.type, enabled=amp == "fp16")
    try:
        from mtad.engine.train import training_step as step
    except ImportError:
        return _run_epoch_step(model, params, opt, opt.mtad_scaler, images, amp)
    return step(model.loss, opt, opt.mtad_scaler, images, 1e-3, 5.0, amp)[0]


def _run_epoch_step(model, params, opt, scaler, images, amp) -> float:
    """The step of mtad.engine.train.run_epoch before issue 18 (less its LambdaLR step and
    logging), for baselines without training_step."""
    import math

    import torch
    from mtad.engine import distributed as dist

    with dist.autocast(images.device, amp):
        loss = model.loss(images)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(params, 5.0)
    stats = dist.all_reduce_sum(torch.stack([loss.detach().float(), norm.float()]))
    loss_value, norm_value = (v / dist.world_size() for v in stats.tolist())
    if not math.isfinite(loss_value) or (not math.isfinite(norm_value) and not scaler.is_enabled()):
        raise RuntimeError(f"loss {loss_value}, gradient norm {norm_value}")
    scaler.step(opt)
    scaler.update()
    return loss_value


def child(args) -> None:
    """Measure one (model, size) cell with the mtad found on sys.path; print one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import mtad
    from mtad.models import MTAD
    from mtad.models.complexity import count_flops

    info = {"mtad": os.path.dirname(mtad.__file__), "threads": torch.get_num_threads()}
    torch.manual_seed(0)
    model = MTAD(**MODELS[args.model])
    if args.compile:
        import torch._dynamo

        # each block is its own compiled module, with its own drop-path constant
        torch._dynamo.config.recompile_limit = 64
        torch._dynamo.config.accumulated_recompile_limit = 4096
        for level in model.decoder.levels:
            for i, block in enumerate(level.blocks):
                level.blocks[i] = torch.compile(block, dynamic=False)
    counts = count_flops(model, args.size)
    c = counts["counted"]
    info["gflop_per_image"] = (c["encoder"] + 3 * (c["neck"] + c["decoder"] + counts["scan"])) / 1e9
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    images = torch.randn(args.batch, 3, args.size, args.size,
                         generator=torch.Generator().manual_seed(1))

    def step():
        return training_step(model, params, opt, images)

    start = time.perf_counter()
    step()
    info["warmup_s"] = time.perf_counter() - start
    try:
        from mtad.ops import scan_cpp

        info["scan_backend"] = "cpp" if scan_cpp.load() is not None else "chunked"
        info["cpp_load_s"] = scan_cpp.BUILD_SECONDS
    except ImportError:
        info["scan_backend"] = "chunked"
    times, cpu, loss = [], [], None
    for _ in range(args.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    info["step_s"] = sorted(times)[len(times) // 2]
    info["steps_s"] = times
    info["cpu_s"] = sorted(cpu)[len(cpu) // 2]
    info["loss"] = loss
    print("RESULT " + json.dumps(info))


def matmul_gflops(n: int = 1024) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def unpack(ref: str, dest: str) -> str:
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", ref], check=True,
                         capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return sha


def run_cell(code_root: str, model: str, size: int, args, compile_: bool = False) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = code_root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", model,
           "--size", str(size), "--batch", str(args.batch), "--steps", str(args.steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if compile_:
        cmd.append("--compile")
    res = subprocess.run(cmd, env=env, cwd=code_root, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"measurement failed ({model}, {size} px, {code_root}):\n"
                       + res.stderr[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main",
                        help="git ref to compare against (default main); 'none' to skip")
    parser.add_argument("--quick", action="store_true", help="demo model, 128 px, 2 steps")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--models", nargs="+", default=["demo", "official"], choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true",
                        help="also measure the current code with torch.compile'd decoder blocks")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.models, args.sizes, args.steps = ["demo"], [128], 2

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="mtad-baseline-")
    try:
        versions = [("current", ROOT, False)]
        if args.baseline.lower() != "none":
            sha = unpack(args.baseline, tmp)
            versions.insert(0, (f"{args.baseline} ({sha})", tmp, False))
        if args.compile:
            versions.append(("current+compile", ROOT, True))
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "mtad"],
                               capture_output=True, text=True).stdout.strip()
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
              f"{args.steps} timed steps per cell; current = working tree at {head}"
              + (" (uncommitted changes in mtad/)" if dirty else ""))
        peak_before = matmul_gflops()
        print(f"fp32 matmul 1024^3: {peak_before:.1f} GFLOP/s")
        rows = []
        for model in args.models:
            for size in args.sizes:
                cell = {}
                for name, code_root, compile_ in versions:
                    r = run_cell(code_root, model, size, args, compile_)
                    cell[name] = r
                    print(f"  {model} {size}px {name}: {r['step_s']:.3f} s/step "
                          f"(steps {', '.join(f'{t:.2f}' for t in r['steps_s'])}; warm-up "
                          f"{r['warmup_s']:.1f} s, scan {r['scan_backend']}"
                          + (f", kernel build/load {r['cpp_load_s']:.1f} s" if r.get('cpp_load_s')
                             is not None else "") + ")", flush=True)
                rows.append((model, size, cell))
        peak_after = matmul_gflops()
        peak = max(peak_before, peak_after)
        print(f"fp32 matmul 1024^3 after: {peak_after:.1f} GFLOP/s; using {peak:.1f}\n")
        names = [n for n, _, _ in versions]
        header = (f"{'model':10s}{'px':>5s}{'version':>24s}{'s/step':>8s}{'img/s':>8s}"
                  f"{'GFLOP/img':>10s}{'GFLOP/s':>9s}{'of matmul':>10s}{'speed-up':>9s}"
                  f"{'cpu s/step':>11s}{'cpu speed-up':>13s}{'last loss':>12s}{'rel diff':>9s}")
        print(header)
        print("-" * len(header))
        for model, size, cell in rows:
            base = cell[names[0]]
            for name in names:
                r = cell[name]
                rate = args.batch / r["step_s"]
                gflops = rate * r["gflop_per_image"]
                speed = base["step_s"] / r["step_s"]
                diff = abs(r["loss"] - base["loss"]) / abs(base["loss"])
                print(f"{model:10s}{size:>5d}{name:>24s}{r['step_s']:>8.3f}{rate:>8.2f}"
                      f"{r['gflop_per_image']:>10.2f}{gflops:>9.1f}{gflops / peak:>10.1%}"
                      f"{speed:>8.2f}x{r['cpu_s']:>11.3f}{base['cpu_s'] / r['cpu_s']:>12.2f}x"
                      f"{r['loss']:>12.5f}{diff:>9.1e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
