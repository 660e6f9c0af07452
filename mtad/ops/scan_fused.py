"""The selective scan exported as one custom ONNX node, ``mtad.SelectiveScan`` (opt-in).

``mtad export RUN --format openvino --fused-scan`` traces the model inside :func:`exporting`;
each scan then becomes Transpose -> ``mtad::SelectiveScan`` -> Transpose instead of the
standard-operator graph of `mtad.ops.scan_export` (which stays the default and what every
runtime runs). The node has the layout of the model's activations (channels innermost):

    inputs  u, delta (b, l, d); A (d, n); B, C (b, l, n); then the present ones of
            D (d), z (b, l, d), delta_bias (d), in that order
    attributes delta_softplus, has_D, has_z, has_delta_bias (int 0/1)
    output  y (b, l, d)

the maths of `mtad.ops.scan_export.selective_scan_export`. The Transposes around it cancel
against the model's own (its activations are transposed (b, l, d) views); OpenVINO runs the
node through the extension `mtad.deploy.fused_scan` builds. TorchScript exporter only (the
``symbolic`` below); the dynamo exporter would need an onnxscript translation.
"""
from __future__ import annotations

import contextlib
import threading

import torch

DOMAIN, OP = "mtad", "SelectiveScan"
OPSET = {DOMAIN: 1}          # torch.onnx.export(custom_opsets=...)

_STATE = threading.local()


def active() -> bool:
    """True inside :func:`exporting` (on this thread)."""
    return bool(getattr(_STATE, "on", False))


@contextlib.contextmanager
def exporting():
    """Trace scans as ``mtad.SelectiveScan`` nodes while inside (this thread only)."""
    before = active()
    _STATE.on = True
    try:
        yield
    finally:
        _STATE.on = before


class _FusedScan(torch.autograd.Function):
    """Forward on (b, l, d) inputs: the export scan's values (the tracer needs real ones);
    the ONNX exporter writes the custom node instead (``symbolic``)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
        from mtad.ops.scan_export import selective_scan_export

        def opt(t, transpose=False):
            return None if not t.numel() else t.transpose(1, 2) if transpose else t

        # the values only: not recorded by the tracer (the node's subgraph would be the whole
        # unrolled scan, and the TorchScript exporter's passes fail on it)
        tracing = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            y = selective_scan_export(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                      C.transpose(1, 2), opt(D), opt(z, True), opt(delta_bias),
                                      delta_softplus, method="unrolled")
        finally:
            torch._C._set_tracing_state(tracing)
        return y.transpose(1, 2).contiguous()

    @staticmethod
    def symbolic(g, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        present = [(k, v) for k, v in (("D", D), ("z", z), ("delta_bias", delta_bias))
                   if v.type().sizes() != [0]]
        y = g.op(f"{DOMAIN}::{OP}", u, delta, A, B, C, *(v for _, v in present),
                 delta_softplus_i=int(bool(delta_softplus)),
                 **{f"has_{k}_i": int(any(k == p for p, _ in present))
                    for k in ("D", "z", "delta_bias")})
        y.setType(u.type())
        return y


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False):
    """(b, d, l) in and out like `mtad.ops.selective_scan`; float32 only (the extension's
    type). Traced into one ``mtad.SelectiveScan`` node between two Transposes."""
    f32 = torch.float32
    empty = u.new_zeros(0, dtype=f32)

    def f(t):       # no Cast node for what is float32 already
        return t if t.dtype == f32 else t.to(f32)

    def bld(t):
        return f(t).transpose(1, 2)

    y = _FusedScan.apply(bld(u), bld(delta), f(A), bld(B), bld(C),
                         f(D) if D is not None else empty,
                         bld(z) if z is not None else empty,
                         f(delta_bias) if delta_bias is not None else empty,
                         bool(delta_softplus)).transpose(1, 2)
    return y if y.dtype == u.dtype else y.to(u.dtype)
