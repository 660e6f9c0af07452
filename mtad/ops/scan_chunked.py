"""The ``chunked`` selective-scan backend: the portable CPU path, a
``torch.autograd.Function`` with a hand-written backward (described in `mtad.ops.scan`'s
docstring, "Backends"). Reach it through `mtad.ops.scan.selective_scan`
(``backend="chunked"``) or ``selective_scan_chunked`` (no shape checks)."""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mtad.ops.scan_ref import _compute_dtype

# Default chunk length: at least 16 steps (fewer, larger whole-chunk operations), more while
# a chunk's (chunk, b, n, d) work buffer stays within CHUNK_TARGET_ELEMS elements (2 MiB of
# float32), so small problems are not dominated by per-operation overhead. Tuned on MTAD's
# shapes on a 2-core CPU (benchmarks/results_scan.md): 16 at level 3 (b*n*d = 128*8*64) and
# level 0 (8*8*512), 64 for 16 windows x 64 channels, 128 for 1 x 512.
CHUNK_TARGET_ELEMS = 1 << 19


def default_chunk_size(b: int, n: int, d: int) -> int:
    """Chunk length used when ``chunk_size`` is not given: a power of two in [16, 256]."""
    per_step = max(1, b * n * d)
    T = 16
    while T < 256 and 2 * T * per_step <= CHUNK_TARGET_ELEMS:
        T *= 2
    return T


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False, chunk_size=None):
    """The chunked backend on checked inputs (see `mtad.ops.scan.selective_scan`)."""
    T = int(chunk_size) if chunk_size is not None else \
        default_chunk_size(u.shape[0], A.shape[1], u.shape[1])
    if T < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    y, last = _ChunkedScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), T)
    return (y, last) if return_last_state else y


# Everything is processed chunk by chunk in a time-major layout: per-step rows are (b, d) or
# (b, n), the state is (b, n, d) with d innermost, and a chunk is a contiguous (m, b, ...) slab
# of cache-sized, reused work buffers. Inputs are read per chunk straight from the caller's
# tensors (any strides) and results are written per chunk straight into the outputs, so the
# only full-length allocations are the outputs themselves and the chunk-boundary states:
# fresh large tensors cost page faults that, on small machines, take longer than the maths.

# Smallest log-decay fed to exp(): exp() of arguments whose result is subnormal or underflows is
# 15-45x slower on x86 CPUs, and such decays (< 1e-26 in float32) change nothing measurable.
_MIN_LOG_DECAY = {torch.float32: -60.0, torch.float64: -600.0}

# torch runs an elementwise op on the calling thread alone unless it has more elements than
# at::internal::GRAIN_SIZE (32768). The step-by-step updates are split into pieces of at most
# that: hundreds of tiny multi-threaded ops each pay a fork/join, and when the cores are
# shared with other processes each join can wait for a scheduler slice (measured here: 7 us
# for a serial 32768-element update, 5-7 ms for a parallel 32769-element one under load).
_SERIAL_ELEMS = 32768


def _chunk_bounds(l, T):
    return [(s, min(s + T, l)) for s in range(0, l, T)]


def _pieces(numel, whole=False):
    if numel == 0:
        return []
    if whole:                 # on a GPU every launch costs alike: one piece, fewest launches
        return [(0, numel)]
    k = -(-numel // _SERIAL_ELEMS)
    size = -(-numel // k)
    return [(s, min(s + size, numel)) for s in range(0, numel, size)]


def _scan_forward(a, h, h_prev):
    """In place: h[t] += a[t] * h[t-1] for t = 0..m-1, with h[-1] = h_prev (None: zero)."""
    m = a.shape[0]
    a2, h2 = a.view(m, -1), h.view(m, -1)
    p2 = h_prev.view(-1) if h_prev is not None else None
    for s, e in _pieces(a2.shape[1], a.is_cuda):
        ap, hp = a2[:, s:e].unbind(0), h2[:, s:e].unbind(0)
        if p2 is not None:
            hp[0].addcmul_(ap[0], p2[s:e])
        for t in range(1, m):
            hp[t].addcmul_(ap[t], hp[t - 1])


def _scan_reverse(a, g, a_next, g_next):
    """In place: g[t] += a[t+1] * g[t+1] for t = m-1..0, with a[m], g[m] = a_next, g_next."""
    m = a.shape[0]
    a2, g2 = a.view(m, -1), g.view(m, -1)
    an = a_next.view(-1) if a_next is not None else None
    gn = g_next.view(-1) if g_next is not None else None
    for s, e in _pieces(a2.shape[1], a.is_cuda):
        ap, gp = a2[:, s:e].unbind(0), g2[:, s:e].unbind(0)
        if an is not None:
            gp[m - 1].addcmul_(an[s:e], gn[s:e])
        for t in range(m - 2, -1, -1):
            gp[t].addcmul_(ap[t + 1], gp[t + 1])


# Work buffers are kept per thread between calls (about 20 MiB at MTAD's level 3): a fresh
# multi-MiB tensor pays page faults on first touch, which on small machines costs as much as
# the arithmetic done in it. They never escape a call; release_workspace() frees them.
_TLS = threading.local()


def release_workspace() -> None:
    """Free this thread's cached work buffers of the chunked scan."""
    _TLS.bufs = {}


def _work(name, shape, dtype, device):
    cache = getattr(_TLS, "bufs", None)
    if cache is None:
        cache = _TLS.bufs = {}
    numel = 1
    for k in shape:
        numel *= k
    key = (name, dtype, device)
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = cache[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


class _Chunks:
    """Per-call state of the chunked scan: time-major views of the inputs and work buffers."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, softplus, T, backward=False):
        cd = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        b, d, l = u.shape
        n = A.shape[1]
        self.cd, self.b, self.d, self.l, self.n = cd, b, d, l, n
        self.T = T = max(1, min(T, l))
        self.bounds = _chunk_bounds(l, T)
        self.softplus = softplus
        # (l, b, k) views of the caller's tensors; read one chunk at a time
        self.uP, self.dP, self.BP, self.CP = (x.permute(2, 0, 1) for x in (u, delta, B, C))
        self.zP = z.permute(2, 0, 1) if z is not None else None
        self.At = A.to(cd).t().contiguous()                                  # (n, d)
        self.Dc = D.to(cd) if D is not None else None
        self.bias = delta_bias.to(cd) if delta_bias is not None else None

        def work(name, *shape):
            return _work(name, shape, cd, u.device)

        self.a = work("a", T, b, n, d)        # decays exp(dt A); in backward then W
        self.h = work("h", T, b, n, d)        # inputs dt u B, then states
        self.x = work("x", T, b, d)           # delta (+ bias), then dt
        self.uc = work("u", T, b, d)
        self.zc = work("z", T, b, d) if z is not None else None
        self.xu = work("xu", T, b, d)         # dt u
        self.y = work("y", T, b, d)           # C . h + D u
        self.Bc = work("B", T, b, n)
        self.Cc = work("C", T, b, n)
        if backward:
            self.g = work("g", T, b, n, d)      # adjoint states
            self.tmp = work("tmp", T, b, n, d)  # products to reduce
            self.gy = work("gy", T, b, d)
            self.r1 = work("r1", T, b, d)
            self.r2 = work("r2", T, b, d)
            self.rn = work("rn", T, b, n)
        self.raw = work("raw", T, b, d) if backward and softplus else None   # delta + bias
        self.min_log_decay = _MIN_LOG_DECAY[cd]
        # the clamp before exp() is skipped when no dt * A can reach the floor
        self.clamp = False
        if delta.numel() and self.At.numel():
            dmax = delta.max().to(cd) + (self.bias.max() if self.bias is not None else 0)
            if softplus:
                dmax = F.softplus(dmax)
            lowest = float(dmax) * float(self.At.min())
            self.clamp = not (lowest >= self.min_log_decay)       # NaN -> clamp

    def load(self, t0, t1):
        """dt, dt*u, B, C of steps t0..t1-1 into the work buffers; returns them (and raw delta)."""
        m = t1 - t0
        x = self.x[:m]
        x.copy_(self.dP[t0:t1])
        if self.bias is not None:
            x.add_(self.bias)
        raw = None
        if self.softplus:
            if self.raw is not None:
                raw = self.raw[:m]
                raw.copy_(x)
            x.copy_(F.softplus(x))
        uc = self.uc[:m]
        uc.copy_(self.uP[t0:t1])
        if self.zP is not None:
            self.zc[:m].copy_(self.zP[t0:t1])
        xu = torch.mul(x, uc, out=self.xu[:m])
        Bc = self.Bc[:m]
        Bc.copy_(self.BP[t0:t1])
        Cc = self.Cc[:m]
        Cc.copy_(self.CP[t0:t1])
        return x, xu, Bc, Cc, raw

    def replay(self, dt, xu, Bc, h_prev):
        """Decays and states of one chunk (in self.a, self.h) from the state h_prev before it."""
        m = dt.shape[0]
        a, h = self.a[:m], self.h[:m]
        torch.mul(dt.unsqueeze(2), self.At, out=a)
        if self.clamp:
            a.clamp_min_(self.min_log_decay)
        a.exp_()
        torch.mul(xu.unsqueeze(2), Bc.unsqueeze(3), out=h)
        _scan_forward(a, h, h_prev)
        return a, h

    def output(self, t0, t1, Cc, h):
        """Pre-gate output C_t . h_t + D u_t of the chunk, in self.y."""
        m = t1 - t0
        y = self.y[:m]
        torch.bmm(Cc.view(m * self.b, 1, self.n), h.view(m * self.b, self.n, self.d),
                  out=y.view(m * self.b, 1, self.d))
        if self.Dc is not None:
            y.addcmul_(self.uc[:m], self.Dc)
        return y

    def silu_z(self, m, out):
        """silu(z) of the loaded chunk into out."""
        zc = self.zc[:m]
        return torch.sigmoid(zc, out=out).mul_(zc)


def _empty_like_bld(u, k, dtype):
    """A (b, k, l) tensor stored as contiguous (b, l, k), and its (l, b, k) view for writing."""
    b, _, l = u.shape
    out = torch.empty((b, l, k), dtype=dtype, device=u.device)
    return out.transpose(1, 2), out.transpose(0, 1)


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, T):
        S = _Chunks(u, delta, A, B, C, D, z, delta_bias, softplus, T)
        out, outP = _empty_like_bld(u, S.d, u.dtype)
        ck = torch.empty((len(S.bounds), S.b, S.n, S.d), dtype=S.cd, device=u.device)
        ck[0].zero_()            # ck[c] = state before chunk c
        h_prev = None
        for c, (t0, t1) in enumerate(S.bounds):
            dt, xu, Bc, Cc, _ = S.load(t0, t1)
            _, h = S.replay(dt, xu, Bc, h_prev)
            y = S.output(t0, t1, Cc, h)
            if S.zP is not None:
                y.mul_(S.silu_z(t1 - t0, S.xu[:t1 - t0]))     # dt * u is no longer needed
            outP[t0:t1].copy_(y)
            if c + 1 < len(S.bounds):
                h_prev = ck[c + 1]
                h_prev.copy_(h[-1])     # the work buffers are overwritten by the next chunk
        ctx.softplus, ctx.T = softplus, S.T
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        # Saved: the inputs themselves (no copies) and the chunk-boundary states (1/T of the
        # state history); backward replays each chunk from its boundary state.
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ck)
        last = h[-1].transpose(1, 2).clone()             # (b, d, n): state after the last step
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, _glast):
        u, delta, A, B, C, D, z, delta_bias, ck = ctx.saved_tensors
        has_D, has_z, has_bias = ctx.has
        S = _Chunks(u, delta, A, B, C, D, z, delta_bias, ctx.softplus, ctx.T, backward=True)
        b, d, l, n, cd = S.b, S.d, S.l, S.n, S.cd
        gP = gout.permute(2, 0, 1)
        gu, guP = _empty_like_bld(u, d, u.dtype)
        gdelta, gdP = _empty_like_bld(u, d, delta.dtype)
        gB, gBP = _empty_like_bld(u, n, B.dtype)
        gC, gCP = _empty_like_bld(u, n, C.dtype)
        gz, gzP = _empty_like_bld(u, d, z.dtype) if has_z else (None, None)
        gA = torch.zeros_like(S.At)                                    # (n, d)
        gD = torch.zeros(d, dtype=cd, device=u.device) if has_D else None
        gbias = torch.zeros(d, dtype=cd, device=u.device) if has_bias else None

        a_next = torch.empty((b, n, d), dtype=cd, device=u.device)   # decay at chunk c+1's 1st step
        g_next = torch.empty_like(a_next)                           # adjoint at that step
        for c in range(len(S.bounds) - 1, -1, -1):
            t0, t1 = S.bounds[c]
            m = t1 - t0
            h_prev = ck[c] if c > 0 else None
            dt, xu, Bc, Cc, raw = S.load(t0, t1)
            a, h = S.replay(dt, xu, Bc, h_prev)
            gy = S.gy[:m]
            gy.copy_(gP[t0:t1])                     # becomes the grad of the pre-gate output
            if has_z:
                y = S.output(t0, t1, Cc, h)
                zc = S.zc[:m]
                s = torch.sigmoid(zc, out=S.r2[:m])
                silu = torch.mul(zc, s, out=S.r1[:m])
                # d silu(z)/dz = s (1 + z (1 - s)) = s (1 + z - silu); y is free afterwards
                y.mul_(gy).mul_(s).mul_(torch.sub(zc, silu, out=s).add_(1))
                gzP[t0:t1].copy_(y)
                gy.mul_(silu)
            uc = S.uc[:m]
            if has_D:
                gD.add_(torch.mul(gy, uc, out=S.r1[:m]).sum((0, 1)))
            # adjoint recurrence: g_t = C_t gy_t + a_{t+1} g_{t+1}
            g, tmp = S.g[:m], S.tmp[:m]
            torch.mul(gy.unsqueeze(2), Cc.unsqueeze(3), out=g)
            last = c + 1 == len(S.bounds)
            _scan_reverse(a, g, None if last else a_next, None if last else g_next)
            a_next.copy_(a[0])
            g_next.copy_(g[0])
            gCP[t0:t1].copy_(torch.sum(torch.mul(h, gy.unsqueeze(2), out=tmp), 3, out=S.rn[:m]))
            gBP[t0:t1].copy_(torch.sum(torch.mul(g, xu.unsqueeze(2), out=tmp), 3, out=S.rn[:m]))
            g_xu = S.r1[:m]                         # sum_n g_t B_t: gradient w.r.t. dt u
            torch.bmm(Bc.view(m * b, 1, n), g.view(m * b, n, d), out=g_xu.view(m * b, 1, d))
            # W_t = g_t a_t h_{t-1}: gradient w.r.t. the log-decay dt_t A (built inside a)
            if m > 1:
                a[1:].mul_(h[:-1])
            if h_prev is not None:
                a[0].mul_(h_prev)
            else:
                a[0].zero_()
            a.mul_(g)
            g_dt = torch.sum(torch.mul(a, S.At, out=tmp), 2, out=S.r2[:m])   # sum_n W A
            gA.add_(torch.mul(a, dt.unsqueeze(2), out=tmp).sum((0, 1)))
            g_dt.addcmul_(g_xu, uc)
            g_xu.mul_(dt)                           # now the gradient w.r.t. u ...
            if has_D:
                g_xu.addcmul_(gy, S.Dc)             # ... including the skip term
            guP[t0:t1].copy_(g_xu)
            if ctx.softplus:
                g_dt.mul_(torch.sigmoid(raw))       # raw = delta + bias, before softplus
            if has_bias:
                gbias.add_(g_dt.sum((0, 1)))
            gdP[t0:t1].copy_(g_dt)

        return (gu, gdelta, gA.t().to(A.dtype), gB, gC,
                gD.to(D.dtype) if has_D else None, gz,
                gbias.to(delta_bias.dtype) if has_bias else None, None, None)
