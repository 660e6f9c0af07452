"""Parameter and FLOP counts for `mtad info`.

torch's FlopCounterMode counts convolutions, linear layers and matrix products
(so the linear attention's K^T V, Q (K^T V) and normaliser products are in),
two FLOPs per multiply-add. It cannot see the selective scan, whose work is
elementwise; that is added analytically per scan of b sequences, d channels,
length l and state size n:
    discretise exp(delta * A) and delta * B * u:  3 * b*d*l*n
    state update h = dA * h + dBu:                 2 * b*d*l*n
    output y = C . h:                              2 * b*d*l*n
    skip D * u and gate y * silu(z):               4 * b*d*l
The published fvcore figures (14.544 G for the official model) count one per
multiply-add and skip the scan; the table shows that convention too.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtad.models import mamba as mamba_module
from mtad.models.mtad import MTAD, MTADConfig, parameter_table


def scan_flops(b: int, d: int, l: int, n: int) -> int:
    return 7 * b * d * l * n + 4 * b * d * l


def count_flops(model: MTAD, image_size: int = 256) -> dict:
    """FLOPs for one image: {'counted': matmul/conv FLOPs by top-level part, 'scan': ...}."""
    scans = []
    real_scan = mamba_module.selective_scan

    def counting_scan(u, delta, A, B, C, D=None, z=None, **kwargs):
        scans.append(scan_flops(u.shape[0], u.shape[1], u.shape[2], A.shape[1]))
        return u * 1.0  # the shape is all that later layers' counts depend on

    x = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False, depth=1)
    was_training = model.training
    model.eval()
    mamba_module.selective_scan = counting_scan
    try:
        with counter, torch.no_grad():
            features = model.encoder(x)
            counted = {"encoder": counter.get_total_flops()}
            bottleneck = model.neck(features)
            counted["neck"] = counter.get_total_flops() - counted["encoder"]
            model.decoder(bottleneck)
            counted["decoder"] = counter.get_total_flops() - counted["encoder"] - counted["neck"]
    finally:
        mamba_module.selective_scan = real_scan
        model.train(was_training)
    return {"counted": counted, "scan": sum(scans)}


def describe(config: MTADConfig, image_size: int = 256) -> str:
    model = MTAD(config)
    lines = [f"MTAD  encoder={config.encoder} (weights: {config.weights})  input 3x{image_size}x{image_size}",
             f"attention={config.attention}  scan_order={config.scan_order}  depths={list(config.depths)}",
             "", f"{'parameters':34s}{'count':>14s}{'exact':>16s}"]
    for name, count in parameter_table(model):
        lines.append(f"  {name:32s}{count / 1e6:>13.3f}M{count:>16,d}")
    flops = count_flops(model, image_size)
    counted = flops["counted"]
    total = sum(counted.values()) + flops["scan"]
    lines += ["", f"{'FLOPs per image':34s}{'FLOPs':>14s}{'MACs (fvcore)':>16s}"]
    for name, value in counted.items():
        lines.append(f"  {name:32s}{value / 1e9:>13.3f}G{value / 2e9:>15.3f}G")
    lines.append(f"  {'selective scan (analytic)':32s}{flops['scan'] / 1e9:>13.3f}G{'-':>16s}")
    lines.append(f"  {'total':32s}{total / 1e9:>13.3f}G{sum(counted.values()) / 2e9:>15.3f}G")
    lines += ["", "FLOPs: torch FlopCounterMode (2 per multiply-add; includes the linear attention's",
              "matrix products) + the selective scan at 7*b*d*l*n + 4*b*d*l. MACs: the same counted",
              "ops at 1 per multiply-add and no scan, the convention of the published 14.544G."]
    return "\n".join(lines)
