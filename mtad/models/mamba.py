"""The Mamba-1 mixer MTAD uses: one scan direction per block, along a chosen token order."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtad.models.scan_order import inverse_order, permute_tokens, scan_order
from mtad.ops import selective_scan


class Mamba(nn.Module):
    """Selective state-space mixer over a sequence of window tokens (B x L x C).

    Tokens are reordered along `order` (e.g. a Hilbert curve of the window)
    before the causal conv and the scan, and put back in row-major order after.
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3, expand: int = 1,
                 order: str = "official", variant: int = 0, window: int = 16,
                 scan_backend: str | None = None):
        super().__init__()
        d_inner = expand * dim
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(dim / 16)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        # S4D-real initialisation: A = -(1..N) for every channel, kept as log for positivity.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        perm = scan_order(order, variant, window)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inverse", inverse_order(perm), persistent=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        length = u.shape[1]
        # one gather of both halves, its backward a gather too (permute_tokens)
        x, z = permute_tokens(self.in_proj(u), self.perm, self.inverse).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :length])  # B x D x L, causal
        dt, b, c = self.x_proj(x.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        # Transposed views, not copies: the scan reads any strides chunk by chunk.
        y = selective_scan(
            x, delta, -torch.exp(self.A_log.float()), b.transpose(1, 2), c.transpose(1, 2),
            self.D.float(), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, backend=self.scan_backend,
        )
        return permute_tokens(self.out_proj(y.transpose(1, 2)), self.inverse, self.perm)
