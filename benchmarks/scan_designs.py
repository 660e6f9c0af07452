"""The exportable scan's other designs, measured by benchmarks/deploy.py (parts "scanops"
and "scan"; figures in benchmarks/README.md, "Export: the scan") and shipped by no
command: `mtad export` uses mtad.ops.scan_export's ``unrolled``. ``register()`` adds
them to ``mtad.ops.scan_export.STATES`` (then ``selective_scan_export(method=...)`` and
``scan_export.DEFAULT_METHOD`` take their names); tests/test_deploy.py checks each
against the reference scan.

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
"""
from __future__ import annotations

import torch

from mtad.ops import scan_export
from mtad.ops.scan_export import _decays_inputs

BLOCK = 16


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


DESIGNS = {"blocked": _states_blocked, "logdepth": _states_logdepth, "loop": _states_loop}


def register() -> tuple[str, ...]:
    """Add the designs to mtad.ops.scan_export.STATES; returns their names."""
    scan_export.STATES.update(DESIGNS)
    return tuple(DESIGNS)
