"""The selective scan's reference: a plain step-by-step loop through autograd
(mamba_ssm's ``selective_scan_ref``). Slow (its backward is O(L^2) in autograd
bookkeeping); the float64-capable oracle the tests check every backend against.
Meaning and shapes: `mtad.ops.scan` (the dispatcher's docstring)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) \
        else torch.float32


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, return_last_state=False):
    """Step-by-step loop through autograd. Test oracle only: slow, O(L^2) backward bookkeeping."""
    out_dtype = u.dtype
    cd = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C = (t.to(cd) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cd)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        dt = delta[:, :, t]
        h = torch.exp(dt[:, :, None] * A) * h + (dt * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(cd)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(out_dtype)
    return (y, h) if return_last_state else y
