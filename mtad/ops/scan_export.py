"""The selective scan written for ONNX export: standard operators only (opset 17+).

Same meaning and shapes as `mtad.ops.scan.selective_scan` (mamba_ssm's
``selective_scan_fn``); no custom operator, no runtime extension, no mamba_ssm.
Forward only (inference), float32 (float64 when an input is float64).

Layout: time-major, state (b, n, d) with d innermost (as the ``chunked``
backend). Decays ``a = exp(dt * A)`` and inputs ``x = dt * u * B`` are made for
a run of steps at once, the recurrence ``h_t = a_t * h_{t-1} + x_t`` runs over
them, and ``y_t = C_t . h_t`` is one batched (1 x n) @ (n x d) MatMul per run.

Methods (``method=``; measured in benchmarks/README.md, "Export: the scan"):

``unrolled`` (the default)
    Straight-line code, in chunks of ``UNROLLED_CHUNK`` (16) steps: per chunk one
    Exp and one outer product on a cache-sized (16, b, n, d) slab, one Split, one
    Mul and one Add per step, one Concat. The sequential order of the torch
    backends (same rounding up to fused multiply-adds), no control flow, any
    exporter and runtime; about 2 nodes per step (l = 256 for MTAD's windows).
    Chunks keep the memory traffic of large batches down (without them the
    (l, b, n, d) tensors are written and copied whole).
``blocked``
    Blocks of ``BLOCK`` (16) steps, all at once: a Hillis-Steele prefix scan inside
    every block (log2(16) rounds on the whole (l, b, n, d) tensors), the same across
    the blocks' end states, then each state adds the earlier blocks' state times its
    decay since its block began. About 60 nodes a scan instead of ~600, but 3-4x
    slower than ``unrolled`` at MTAD's shapes in onnxruntime (benchmarks/deploy.py
    --part scanops): the scan is bound by the traffic of the n-times-expanded state
    tensors, not by the number of nodes.
``logdepth``
    Hillis-Steele prefix scan over the whole sequence: log2(l) rounds of
    ``h[t] += a[t] * h[t-s]; a[t] *= a[t-s]`` on (l, b, n, d) tensors. Fewer
    nodes, log2(l) times the arithmetic and memory traffic; slowest measured.
    Only decays (<= 1) are multiplied, so it is stable.
``loop``
    One ONNX ``Scan`` per block (torch's ``scan`` higher-order op), which only the
    dynamo exporter (``MTAD_ONNX_EXPORTER=dynamo``) translates. Smallest graph and
    competitive speed, but it rests on a private torch API and the slower exporter.

Log-decays below -60 are raised to -60 as in the ``chunked`` backend (exp() into
subnormals is slow, and such decays are zero for all purposes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("unrolled", "blocked", "logdepth", "loop")
DEFAULT_METHOD = "unrolled"
UNROLLED_CHUNK = 16
BLOCK = 16
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


def _states_logdepth(dt, xu, Bt, At, cd):
    a, h = _decays_inputs(dt, xu, Bt, At, cd)
    h, _ = _prefix_scan(a, h, dim=0, decays=False)
    return [h]


def _prefix_scan(a, h, dim: int, decays: bool = True):
    """Hillis-Steele inclusive scan of ``h[t] += a[t] * h[t-1]`` along `dim` (any size):
    log2 rounds of ``h[t] += a[t] * h[t-s]; a[t] *= a[t-s]`` for t >= s. Returns the
    states and the cumulative decays ``prod(a[..t])`` (None with ``decays=False``,
    which skips the decays' last round)."""
    k, s = int(a.shape[dim]), 1
    while s < k:
        tail_a = a.narrow(dim, s, k - s)
        h = torch.cat([h.narrow(dim, 0, s), h.narrow(dim, s, k - s) + tail_a * h.narrow(dim, 0, k - s)],
                      dim=dim)
        if decays or 2 * s < k:
            a = torch.cat([a.narrow(dim, 0, s), tail_a * a.narrow(dim, 0, k - s)], dim=dim)
        s *= 2
    return h, (a if decays else None)


def _states_blocked(dt, xu, Bt, At, cd):
    a, x = _decays_inputs(dt, xu, Bt, At, cd)
    l, rest = int(a.shape[0]), a.shape[1:]
    k = min(BLOCK, l)
    pad = -l % k  # steps that change nothing (decay 1, input 0) up to whole blocks
    if pad:
        a = torch.cat([a, torch.ones((pad, *rest), dtype=cd)], dim=0)
        x = torch.cat([x, torch.zeros((pad, *rest), dtype=cd)], dim=0)
    c = (l + pad) // k
    # a prefix scan inside every block ...
    h, decay = _prefix_scan(a.reshape(c, k, *rest), x.reshape(c, k, *rest), dim=1)
    if c > 1:
        # ... one across the blocks' end states ...
        carried, _ = _prefix_scan(decay[:, -1], h[:, -1], dim=0, decays=False)
        # ... and every state gets the earlier blocks' state times its decay since then
        before = torch.cat([torch.zeros((1, *rest), dtype=cd), carried[:c - 1]], dim=0)
        h = h + decay * before.unsqueeze(1)
    return [h.reshape(c * k, *rest)[:l]]


def _states_loop(dt, xu, Bt, At, cd):
    from torch._higher_order_ops.scan import scan

    a, x = _decays_inputs(dt, xu, Bt, At, cd)

    def step(h, ax):
        at, xt = ax
        h = at * h + xt
        return h, h.clone()

    _, states = scan(step, torch.zeros_like(x[0]), (a, x), dim=0)
    return [states]


_STATES = {"unrolled": _states_unrolled, "blocked": _states_blocked, "logdepth": _states_logdepth, "loop": _states_loop}


def selective_scan_export(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, method: str | None = None):
    """Forward selective scan in exportable operators; returns y (b, d, l) in u's dtype.

    Raises:
        ValueError: unknown ``method`` (valid: METHODS).
    """
    if method is None:
        from mtad.ops import scan_fused

        if scan_fused.active():     # `mtad export --fused-scan`: one custom node
            return scan_fused.selective_scan_fused(u, delta, A, B, C, D, z, delta_bias,
                                                   delta_softplus)
    name = method or DEFAULT_METHOD
    if name not in _STATES:
        raise ValueError(f"unknown export scan method {name!r}; valid: {', '.join(METHODS)}")
    out_dtype = u.dtype
    dt, xu, Bt, Ct, At, cd = _inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    ys, t0 = [], 0
    for h in _STATES[name](dt, xu, Bt, At, cd):                   # runs of states (m, b, n, d)
        m, b, n, d = h.shape
        # y_t = C_t . h_t as one batched (1 x n) @ (n x d) product per run
        ys.append(torch.matmul(Ct[t0:t0 + m].reshape(m * b, 1, n), h.reshape(m * b, n, d))
                  .reshape(m, b, d))
        t0 += m
    y = torch.cat(ys, dim=0).permute(1, 2, 0) if len(ys) > 1 else ys[0].permute(1, 2, 0)
    if D is not None:
        y = y + D.to(cd)[:, None] * u.to(cd)
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(out_dtype)
