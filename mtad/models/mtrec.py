"""The MTRec block: windowed Mamba-Transformer (global) fused with the input (local).

One MTRec block = split into 16x16 windows, add a fixed sin-cos position
embedding, one Mamba-Transformer block, merge the windows, then a 1x1 conv over
[block output, block input]. That conv is the whole "convolutional module" of
the official code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from mtad.models.mamba import Mamba

ATTENTIONS = ("linear", "softmax", "none")


def sincos_position_embedding(dim: int, size: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding of a size x size window (size*size x dim, row-major
    tokens): token (row r, column c) gets [sin(c w) | cos(c w) | sin(r w) | cos(r w)] with
    the dim/4 geometric frequencies w = 10000^(-k/(dim/4)), the column's encoding first.

    That is the official layout (MAE's get_2d_sincos_pos_embed, which the authors' code
    calls with np.meshgrid(grid_w, grid_h): "here w goes first"). Checkpoints of mtad
    before run format 2 hold the row-first embedding and keep it (it is a saved parameter).

    Raises:
        ValueError: dim is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"position embedding needs a channel count divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                                torch.arange(size, dtype=torch.float64), indexing="ij")

    def encode(pos):
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """B x C x H x W -> (B*nW) x window^2 x C, zero-padding H and W up to multiples."""
    b, c, h, w = x.shape
    ph, pw = (-h) % window, (-w) % window
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, c, hp // window, window, wp // window, window)
    x = x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)
    return x, (b, c, h, w, hp, wp)


def window_merge(x: torch.Tensor, window: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of window_partition, cropping the padding."""
    b, c, h, w, hp, wp = shape
    x = x.reshape(b, hp // window, wp // window, window, window, c)
    x = x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, hp, wp)
    return x[:, :, :h, :w]


class _Attention(nn.Module):
    """Shared parts of the attention variants: qkv with bias, heads, output projection."""

    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        """(B, L, C) tokens -> (B, L, C)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(self.mix(q, k, v).transpose(1, 2).reshape(b, n, c))


class LinearAttention(_Attention):
    """Kernelised attention, phi(t) = elu(t) + 1, linear in the token count; no scale."""

    def mix(self, q, k, v):
        q, k = F.elu(q) + 1, F.elu(k) + 1
        kv = k.transpose(-2, -1) @ v                                    # b h d d
        normaliser = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # b h n 1
        return (q @ kv) / normaliser


class SoftmaxAttention(_Attention):
    """Standard multi-head self-attention, for the authors' ablation."""

    def mix(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))


class MambaTransformerBlock(nn.Module):
    """Pre-norm: Mamba + MLP, then attention + MLP, each residual with DropPath."""

    def __init__(self, dim: int, heads: int = 8, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 attention: str = "linear", **mamba_kwargs):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm3, self.norm4 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mamba = Mamba(d_model=dim, **mamba_kwargs)
        self.mlp1, self.mlp2 = mlp(dim, mlp_ratio), mlp(dim, mlp_ratio)
        if attention == "linear":
            self.attn = LinearAttention(dim, heads)
        elif attention == "softmax":
            self.attn = SoftmaxAttention(dim, heads)
        else:
            self.attn = None  # ablation: the attention residual adds nothing
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        """(B, L, C) tokens of windows -> (B, L, C)."""
        x = x + self.drop_path(self.mamba(self.norm1(x)))
        x = x + self.drop_path(self.mlp1(self.norm2(x)))
        if self.attn is not None:
            x = x + self.drop_path(self.attn(self.norm3(x)))
        return x + self.drop_path(self.mlp2(self.norm4(x)))


class MTRecBlock(nn.Module):
    """Windows -> position embedding -> Mamba-Transformer -> merge -> 1x1 fusion with the input."""

    def __init__(self, dim: int, window: int = 16, **block_kwargs):
        super().__init__()
        self.window = window
        # A frozen parameter rather than a buffer: it is part of the official
        # parameter count (fvcore counts it) and of every checkpoint.
        self.pos_embed = nn.Parameter(sincos_position_embedding(dim, window)[None],
                                      requires_grad=False)
        self.block = MambaTransformerBlock(dim, window=window, **block_kwargs)
        self.fuse = nn.Conv2d(2 * dim, dim, kernel_size=1)
        nn.init.normal_(self.fuse.weight, 0.0, math.sqrt(2.0 / dim))  # fan_out = dim * 1 * 1
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x):
        """(B, C, H, W) -> (B, C, H, W)."""
        tokens, shape = window_partition(x, self.window)
        tokens = self.block(tokens + self.pos_embed.to(tokens.dtype))
        global_ = window_merge(tokens, self.window, shape)
        return self.fuse(torch.cat([global_, x], dim=1))
