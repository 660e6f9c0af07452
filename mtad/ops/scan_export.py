"""The selective scan written for ONNX export: standard operators only (opset 17+).

Same meaning and shapes as `mtad.ops.scan.selective_scan` (mamba_ssm's
``selective_scan_fn``); no custom operator, no runtime extension, no mamba_ssm.
Forward only (inference), float32 (float64 when an input is float64).

Layout: time-major, state (b, n, d) with d innermost (as the ``chunked``
backend). Decays ``a = exp(dt * A)`` and inputs ``x = dt * u * B`` are made for
a run of steps at once, the recurrence ``h_t = a_t * h_{t-1} + x_t`` runs over
them, and ``y_t = C_t . h_t`` is one batched (1 x n) @ (n x d) MatMul per run.

Methods (``method=``, the names in ``STATES``):

``unrolled`` (the default)
    Straight-line code, in chunks of ``UNROLLED_CHUNK`` (16) steps: per chunk one
    Exp and one outer product on a cache-sized (16, b, n, d) slab, one Split, one
    Mul and one Add per step, one Concat. The sequential order of the torch
    backends (same rounding up to fused multiply-adds), no control flow, any
    exporter and runtime; about 2 nodes per step (l = 256 for MTAD's windows).
    Chunks keep the memory traffic of large batches down (without them the
    (l, b, n, d) tensors are written and copied whole).

The other designs measured (``blocked``, ``logdepth``, ``loop``: benchmarks/README.md,
"Export: the scan") live with the benchmark that measures them,
benchmarks/scan_designs.py, which adds them to ``STATES`` for its runs; the package
ships the one `mtad export` uses.
Log-decays below -60 are raised to -60 as in the ``chunked`` backend (exp() into
subnormals is slow, and such decays are zero for all purposes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("unrolled",)
DEFAULT_METHOD = "unrolled"
UNROLLED_CHUNK = 16
_MIN_LOG_DECAY = {torch.float32: -60.0, torch.float64: -600.0}


def _inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Time-major dt, dt*u (l, b, d), B, C (l, b, n), A^T (n, d) and the compute dtype."""
    cd = torch.float64 if any(t is not None and t.dtype == torch.float64
                              for t in (u, delta, A, B, C, D, z, delta_bias)) else torch.float32
    u, delta, A, B, C = (t.to(cd) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cd)[:, None]
    if delta_softplus:
        # softplus written out (stable form): runtimes' Softplus kernels are scalar and slow
        delta = torch.clamp(delta, min=0) + torch.log(1 + torch.exp(-delta.abs()))
    dt = delta.permute(2, 0, 1)                                   # l b d
    xu = dt * u.permute(2, 0, 1)                                  # l b d
    return dt, xu, B.permute(2, 0, 1), C.permute(2, 0, 1), A.t(), cd


def _decays_inputs(dt, xu, Bt, At, cd):
    """a = exp(dt A) and x = dt u B, both (m, b, n, d), for a run of m steps."""
    a = torch.exp(torch.clamp(dt.unsqueeze(2) * At, min=_MIN_LOG_DECAY[cd]))
    return a, xu.unsqueeze(2) * Bt.unsqueeze(3)


def _states_unrolled(dt, xu, Bt, At, cd):
    # Chunk by chunk, so that decays and inputs are made in cache-sized pieces and the
    # full (l, b, n, d) tensors never exist at once (memory traffic dominates otherwise).
    l, chunk = dt.shape[0], UNROLLED_CHUNK
    h, out = None, []
    for t0 in range(0, l, chunk):
        t1 = min(l, t0 + chunk)
        a, x = _decays_inputs(dt[t0:t1], xu[t0:t1], Bt[t0:t1], At, cd)
        steps_a, steps_x = a.split(1, dim=0), x.split(1, dim=0)
        states = []
        for k in range(t1 - t0):
            h = steps_x[k] if h is None else steps_a[k] * h + steps_x[k]
            states.append(h)
        out.append(torch.cat(states, dim=0))
    return out


# method name -> its states function (dt, xu, Bt, At, cd) -> runs of states (m, b, n, d)
STATES = {"unrolled": _states_unrolled}


def selective_scan_export(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, method: str | None = None):
    """Forward selective scan in exportable operators; returns y (b, d, l) in u's dtype.

    Raises:
        ValueError: unknown ``method`` (valid: the names in STATES).
    """
    if method is None:
        from mtad.ops import scan_fused

        if scan_fused.active():     # `mtad export --fused-scan`: one custom node
            return scan_fused.selective_scan_fused(u, delta, A, B, C, D, z, delta_bias,
                                                   delta_softplus)
    name = method or DEFAULT_METHOD
    if name not in STATES:
        raise ValueError(f"unknown export scan method {name!r}; valid: {', '.join(STATES)}")
    out_dtype = u.dtype
    dt, xu, Bt, Ct, At, cd = _inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    ys, t0 = [], 0
    for h in STATES[name](dt, xu, Bt, At, cd):                   # runs of states (m, b, n, d)
        m = h.shape[0]
        # y_t = C_t . h_t as one (1 x n) @ (n x d) product per step and row, batched over
        # (m, b) by MatMul itself: no reshape, so no Shape/Gather/Unsqueeze/Concat chain
        # per run (29 nodes a run: about 7,000 of the demo graph's 32,000, 1,000 of them
        # Gathers, on each of which NNCF's ONNX path walks the whole graph)
        ys.append(torch.matmul(Ct[t0:t0 + m].unsqueeze(2), h).squeeze(2))
        t0 += m
    y = torch.cat(ys, dim=0).permute(1, 2, 0) if len(ys) > 1 else ys[0].permute(1, 2, 0)
    if D is not None:
        y = y + D.to(cd)[:, None] * u.to(cd)
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(out_dtype)
