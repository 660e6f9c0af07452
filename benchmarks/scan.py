"""Selective-scan benchmark on CPU at MTAD's shapes: chunked vs reference vs mambapy's pscan.

    .venv/bin/python benchmarks/scan.py            # full run, writes benchmarks/results_scan.md
    .venv/bin/python benchmarks/scan.py --quick    # 3 repeats, bdl layout only, no memory

Every implementation computes the same thing, mamba_ssm's selective_scan_fn with
delta_bias, delta_softplus=True, D and z:
    dt = softplus(delta + bias); h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;
    y = (C_t . h_t + D u_t) * silu(z_t)
For mambapy this is built around `mambapy.pscan.pscan` the way mambapy's own
`MambaBlock.selective_scan` does it (deltaA and deltaB*u as (B, L, D, N)
tensors, pscan, then hs @ C), plus the bias/softplus and z gating, all through
autograd.

Input layouts: "bdl" = u, delta, z, B, C and the output gradient are contiguous
(b, d, l) / (b, n, l) tensors, mamba_ssm's convention; "bld" = they are
`.transpose(1, 2)` views of contiguous (b, l, d) / (b, l, n) tensors, which is
what MTAD's Mamba mixer holds (tokens x channels) before any `.contiguous()`.

Timing: wall-clock ms, median of --repeats runs after one warm-up; within a
case the implementations are interleaved run by run, so machine load and
allocator state hit them alike. "fwd" runs under torch.no_grad(); "fwd+bwd" is
forward, then backward of a fixed random output gradient w.r.t. all 8 inputs.

Memory: in a fresh subprocess per cell, the code path is warmed on a tiny
problem, the kernel's resident-set high-water mark is reset (/proc/self/clear_refs),
the call runs once, and the table shows VmHWM after it minus VmRSS before it:
the call's peak resident working set, outputs and gradients included (MiB).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mtad.ops import default_chunk_size, selective_scan  # noqa: E402

CASES = {
    # name: (b windows, d channels, l tokens, n state)
    "level 3, batch 8: 128 x 64 x 256, n 8": (128, 64, 256, 8),
    "level 0, batch 8: 8 x 512 x 256, n 8": (8, 512, 256, 8),
}
LAYOUTS = ("bdl", "bld")
IMPLS = ("chunked", "mambapy", "reference")


def make_inputs(b, d, l, n, layout="bdl", seed=0):
    g = torch.Generator().manual_seed(seed)

    def seq(k):                       # a (b, k, l) tensor in the requested memory layout
        if layout == "bld":
            return torch.randn(b, l, k, generator=g).transpose(1, 2)
        return torch.randn(b, k, l, generator=g)

    u = seq(d)
    delta = seq(d).mul_(0.5).sub_(1.0)
    A = -torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1)
                   + 0.1 * torch.randn(d, n, generator=g))
    B, C = seq(n), seq(n)
    D = torch.ones(d)
    z = seq(d)
    bias = torch.randn(d, generator=g) * 0.5 - 2.0
    gy = seq(d)
    return [u, delta, A, B, C, D, z, bias], gy


def mambapy_scan(u, delta, A, B, C, D, z, bias):
    from mambapy.pscan import pscan
    x = u.transpose(1, 2)                                         # (b, l, d)
    dt = F.softplus(delta.transpose(1, 2) + bias)                 # (b, l, d)
    deltaA = torch.exp(dt.unsqueeze(-1) * A)                      # (b, l, d, n)
    BX = (dt * x).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)  # (b, l, d, n)
    hs = pscan(deltaA, BX)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + D * x
    y = y * F.silu(z.transpose(1, 2))
    return y.transpose(1, 2)


def call(impl, xs):
    u, delta, A, B, C, D, z, bias = xs
    if impl == "mambapy":
        return mambapy_scan(u, delta, A, B, C, D, z, bias)
    return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True,
                          backend=impl)


def run_once(impl, mode, inputs, gy):
    if mode == "fwd":
        with torch.no_grad():
            call(impl, inputs)
        return
    xs = [t.detach().requires_grad_() for t in inputs]
    call(impl, xs).backward(gy)


def timed(impl, mode, inputs, gy):
    t = time.perf_counter()
    run_once(impl, mode, inputs, gy)
    return (time.perf_counter() - t) * 1e3


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_child(case, layout, impl, mode):
    inputs, gy = make_inputs(*CASES[case], layout=layout)
    small, sgy = make_inputs(2, 4, 16, 2, layout=layout)
    run_once(impl, mode, small, sgy)           # import and warm the code path
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                           # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    run_once(impl, mode, inputs, gy)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def measure_memory(case, layout, impl, mode, threads):
    env = dict(os.environ)
    env.pop("MTAD_SCAN_BACKEND", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory", case, layout, impl, mode,
           "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]


def fmt_ms(v):
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def fmt_mib(v):
    return "-" if v is None else f"{v:,.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats, the bdl layout only, no memory subprocesses")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 5)")
    ap.add_argument("--threads", default=None,
                    help="comma list of intra-op thread counts (default: 1 and torch's default)")
    ap.add_argument("--layouts", default=None, help="comma list of bdl,bld (default both)")
    ap.add_argument("--reference-forward-only", action="store_true",
                    help="skip the reference loop's forward+backward (its backward is O(L^2))")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results_scan.md"),
                    help="markdown file to write ('' to skip)")
    ap.add_argument("--_memory", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._memory:
        torch.set_num_threads(int(args.threads or 1))
        memory_child(*args._memory)
        return

    default_threads = torch.get_num_threads()
    threads_list = ([int(t) for t in args.threads.split(",")] if args.threads else
                    sorted({1, default_threads}))
    repeats = args.repeats or (3 if args.quick else 5)
    layouts = args.layouts.split(",") if args.layouts else (["bdl"] if args.quick else LAYOUTS)
    with_memory = not (args.quick or args.no_memory)
    cmd = "python benchmarks/scan.py" + "".join(
        " " + a for a in (argv if argv is not None else sys.argv[1:]))
    header = [
        f"command: `{cmd}`",
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, float32, "
        "intra-op threads " + ", ".join(map(str, threads_list)) + "; chunk lengths "
        + ", ".join(str(default_chunk_size(b, n, d)) for b, d, l, n in CASES.values())
        + f" (default rule); load average at start {os.getloadavg()[0]:.2f}",
        f"time: median of {repeats} runs after a warm-up, ms; memory: peak resident working "
        "set of the call in a fresh process, MiB" + ("" if with_memory else " (not measured)"),
    ]
    print("\n".join(header), flush=True)
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for layout in layouts:
            first = layout == layouts[0]
            for case, shape in CASES.items():
                # reference and memory only in the first layout; memory only at the first
                # thread count (it does not depend on it)
                impls = IMPLS if first else IMPLS[:2]
                cells = [(i, m) for i in impls for m in ("fwd", "fwd+bwd")
                         if not (i == "reference" and m == "fwd+bwd"
                                 and args.reference_forward_only)]
                inputs, gy = make_inputs(*shape, layout=layout)
                times = {c: [] for c in cells}
                for c in cells:                      # warm-up
                    timed(*c, inputs, gy)
                for _ in range(repeats):
                    for c in cells:
                        times[c].append(timed(*c, inputs, gy))
                med = {c: statistics.median(v) for c, v in times.items()}
                mem = {}
                if with_memory and first and threads == threads_list[0]:
                    mem = {c: measure_memory(case, layout, *c, threads) for c in cells}
                tag = f"{threads} thr | {layout} | {case:38s}"
                for impl in impls:
                    f, fb = med.get((impl, "fwd")), med.get((impl, "fwd+bwd"))
                    mf, mfb = mem.get((impl, "fwd")), mem.get((impl, "fwd+bwd"))
                    rows.append((threads, layout, case, impl, f, fb, mf, mfb))
                    print(f"{tag} | {impl:9s} | fwd {fmt_ms(f):>7s} ms | fwd+bwd "
                          f"{fmt_ms(fb):>7s} ms" + (f" | peak {fmt_mib(mf)} / {fmt_mib(mfb)} MiB"
                                                    if mem else ""), flush=True)
                r_f = med[("mambapy", "fwd")] / med[("chunked", "fwd")]
                r_fb = med[("mambapy", "fwd+bwd")] / med[("chunked", "fwd+bwd")]
                rows.append((threads, layout, case, "ratio", r_f, r_fb, None, None))
                print(f"{tag} | mambapy time / chunked time: fwd {r_f:.1f}x, "
                      f"fwd+bwd {r_fb:.1f}x", flush=True)

    lines = ["# Selective scan on CPU: chunked vs reference vs mambapy", ""]
    lines += [f"- {h}" for h in header]
    lines += [f"- load average at the end: {os.getloadavg()[0]:.2f} (1 min), "
              f"{os.getloadavg()[1]:.2f} (5 min)"]
    lines += ["- layouts: bdl = inputs and output gradient are contiguous (b, d, l) tensors "
              "(mamba_ssm's convention); bld = they are `.transpose(1, 2)` views of contiguous "
              "(b, l, d) tensors, as MTAD's mixer holds its activations",
              "", "| threads | layout | case | implementation | fwd ms | fwd+bwd ms | "
              "peak MiB fwd | peak MiB fwd+bwd |", "|---:|---|---|---|---:|---:|---:|---:|"]
    for threads, layout, case, impl, f, fb, mf, mfb in rows:
        if impl == "ratio":
            lines.append(f"| {threads} | {layout} | {case} | **mambapy / chunked** | "
                         f"**{f:.1f}x** | **{fb:.1f}x** | | |")
            continue
        fbs = fmt_ms(fb) if fb is not None else "not run"
        lines.append(f"| {threads} | {layout} | {case} | {impl} | {fmt_ms(f)} | {fbs} | "
                     f"{fmt_mib(mf)} | {fmt_mib(mfb)} |")
    lines += [
        "",
        "Notes:",
        "- mambapy / chunked is the ratio of the medians (how many times faster chunked is).",
        "- The machine is shared: times move by tens of percent between runs when other "
        "processes use the cores (load average above). Compare within one run. With other "
        "processes on the cores, every multi-threaded torch op pays a fork/join that can wait "
        "milliseconds for a descheduled thread; the 1-thread rows are the steadier ones.",
        "- reference is mtad's step-by-step autograd loop (test oracle). Its forward is a "
        "plain loop under no_grad; its backward is autograd through 256 indexed steps.",
        "- Peak memory includes the outputs (and, for fwd+bwd, the 8 input gradients); "
        "chunked never allocates a (b, d, l, n) tensor, mambapy holds several.",
    ]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
