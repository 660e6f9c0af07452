"""The Mamba-1 mixer MTAD uses: one scan direction per block, along a chosen token order.

Names follow mamba_ssm's ``Mamba`` (``mamba_ssm/modules/mamba_simple.py``) and mambapy:
``d_model`` (D) the token width, ``d_inner`` (ED = expand x D), ``d_state`` (N),
``dt_rank`` (R = ceil(D / 16)), the sequence length L (tokens of one window), and the
scan's ``dt``, ``A``, ``B``, ``C``, ``D`` of `mtad.ops.selective_scan` (mamba_ssm's
``selective_scan_fn``). The parameter names are mamba_ssm's too, so the official
checkpoint's tensors keep their names.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtad.models.scan_order import inverse_order, permute_tokens, scan_order
from mtad.ops import selective_scan


class Mamba(nn.Module):
    """Selective state-space mixer over a sequence of window tokens.

    Tokens are reordered along `order` (e.g. a Hilbert curve of the window, `variant`
    one of its symmetries) before the causal conv and the scan, and put back in
    row-major order after.
    """

    def __init__(self, d_model: int, d_state: int = 8, d_conv: int = 3, expand: int = 1,
                 order: str = "official", variant: int = 0, window: int = 16,
                 scan_backend: str | None = None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model                                # ED
        self.dt_rank = math.ceil(d_model / 16)                         # R
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)          # D -> 2 ED (x, z)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1)                            # depthwise, causal
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)  # ED->R+2N
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)          # R -> ED
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)             # ED -> D
        # S4D-real initialisation: A = -(1..N) for every channel, kept as log for positivity.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (ED, N)
        self.A_log = nn.Parameter(torch.log(A))                        # (ED, N)
        self.D = nn.Parameter(torch.ones(self.d_inner))                # (ED,)
        perm = scan_order(order, variant, window)                      # (L,) row-major -> scan
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inverse", inverse_order(perm), persistent=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, D) tokens of windows in row-major order -> (B, L, D), same order."""
        seqlen = hidden_states.shape[1]                                # L
        # one gather of both halves, its backward a gather too (permute_tokens)
        xz = permute_tokens(self.in_proj(hidden_states), self.perm, self.inverse)  # (B, L, 2ED)
        x, z = xz.chunk(2, dim=-1)                                     # (B, L, ED) each
        x = self.conv1d(x.transpose(1, 2))[..., :seqlen]               # (B, ED, L), causal
        x = F.silu(x)                                                  # (B, ED, L)
        x_dbl = self.x_proj(x.transpose(1, 2))                         # (B, L, R + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt: (B, L, R); B, C: (B, L, N)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)         # (B, ED, L), bias: scan
        A = -torch.exp(self.A_log.float())                             # (ED, N)
        # Transposed views, not copies: the scan reads any strides chunk by chunk.
        y = selective_scan(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2),            # B, C: (B, N, L)
            self.D.float(), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, backend=self.scan_backend,
        )                                                              # (B, ED, L)
        out = self.out_proj(y.transpose(1, 2))                         # (B, L, D)
        return permute_tokens(out, self.inverse, self.perm)            # (B, L, D), row-major
