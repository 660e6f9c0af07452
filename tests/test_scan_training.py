"""Training through the compiled scan: one step's loss and gradients against float64.

Many optimiser steps are no test of the scan's arithmetic: every step feeds its rounding into
the next weights, and how far that grows depends on the CPU's instruction set (issue 16: 20
SGD steps through ``cpp`` and ``chunked`` agreed to 1e-6 on an AVX-512 Xeon and differed by
1.6e-4 at step 12 on an AVX2-only EPYC; AdamW amplifies more, it scales near-zero gradients
to full-size steps). What is deterministic is one step from the same weights: the loss and
the gradient of every trained parameter in float32, through each backend, against the same
step in float64 through ``chunked`` (itself checked against the float64 reference loop to
1e-9 in test_selective_scan.py). A few steps of training then show the backend trains.
"""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import mtad.ops.scan_cpp as scan_cpp
from mtad.engine.train import training_step
from mtad.models import MTAD

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler for the cpp scan backend")

# float32 carries 24 bits (unit roundoff 2^-24 = 6e-8). The tiny model's loss goes through
# ~30 layers (convolutions and linears summing up to ~1000 products, LayerNorm/BatchNorm,
# scans of up to 64 steps) and back; TOL allows 2^12 = 4096 units of rounding to pile up,
# relative to the largest value of each tensor. Measured: loss 1.5e-7, worst gradient 2.2e-5
# (a neck convolution's, through either backend: the scan adds no visible error), the same
# on this AVX-512 Xeon and with MTAD_SCAN_MARCH=x86-64-v3 ATEN_CPU_CAPABILITY=avx2 (AVX2), so
# TOL keeps a margin of 10 on any x86-64 CPU; a wrong gradient (a dropped term, a wrong
# index) is off by 1e-2 or more of the tensor's largest value, far above TOL.
TOL = 2.0 ** -24 * 2 ** 12        # 2.4e-4


def tiny_model(backend: str, dtype: torch.dtype) -> MTAD:
    # drop_path 0: the random drop masks would differ between float32 and float64
    torch.manual_seed(0)
    model = MTAD(encoder="efficientnet_lite0", depths=(1, 1, 1, 1), drop_path=0.0)
    model.scan_backend = backend   # a run-time choice, not part of the architecture
    return model.to(dtype).train()


def images(n: int = 2) -> torch.Tensor:
    # smooth 64 px images, roughly ImageNet-normalised
    g = torch.Generator().manual_seed(1)
    x = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=64, mode="bilinear")
    return (x - 0.45) / 0.25


def loss_and_grads(backend: str, dtype: torch.dtype):
    model = tiny_model(backend, dtype)
    loss = model.loss(images().to(dtype))
    loss.backward()
    return loss.item(), {n: p.grad.double() for n, p in model.named_parameters()
                         if p.requires_grad}


@pytest.fixture(scope="module")
def float64_step():
    return loss_and_grads("chunked", torch.float64)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_compiler), "chunked"])
def test_one_step_loss_and_every_gradient_match_float64(backend, float64_step):
    if backend == "cpp":
        assert scan_cpp.load() is not None, scan_cpp.error()
    loss64, g64 = float64_step
    loss32, g32 = loss_and_grads(backend, torch.float32)
    # MTAD.loss casts to float32 even in the float64 model: both losses carry that rounding
    assert abs(loss32 - loss64) <= TOL * abs(loss64), (loss32, loss64)
    assert set(g32) == set(g64) and len(g64) > 50
    decoder = [n for n in g64 if n.startswith("decoder.") and g64[n].abs().max() > 0]
    assert any("mamba" in n for n in decoder)      # the scan's own parameters are compared
    largest = max(ref.abs().max().item() for ref in g64.values())
    for name, ref in g64.items():
        scale = ref.abs().max().item()
        err = (g32[name] - ref).abs().max().item()
        if scale <= 1e-9 * largest:
            # a bias that a training-mode BatchNorm cancels (the neck's 1x1 convs, as in the
            # official FPN): its exact gradient is 0, float64 gives 1e-16, and float32 leaves
            # the rounding of a sum of terms of the model's gradient scale; bound it by that
            assert err <= TOL * largest, (name, err, largest)
            continue
        assert err <= TOL * scale, (name, err, scale)


@needs_compiler
def test_the_cpp_backend_trains():
    # 8 steps of the trainer's training_step (with SGD) on one batch through the compiled
    # scan (its forward and backward each step,
    # the optimiser changing the weights in between): measured, the loss falls steadily to
    # 0.74 of the first (the same on AVX-512 and AVX2); 0.85 leaves room for any CPU's
    # rounding, and a wrong gradient does not bring it down like that.
    assert scan_cpp.load() is not None, scan_cpp.error()
    model = tiny_model("cpp", torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = images(2)
    losses = [training_step(model.loss, opt, scaler, x, 0.01, 5.0)[0] for _ in range(8)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.85 * losses[0], losses
