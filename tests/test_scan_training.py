"""Training through the compiled scan follows the chunked backend step for step.

Rounding differs between the backends (another exp() polynomial, other summation orders), and
AdamW amplifies rounding: it scales every update to about the learning rate whatever the
gradient's size, so last-bit differences in near-zero gradients become full-size steps.
Measured on the tiny model below (relative loss difference per step, 20 AdamW steps):

    cpp vs chunked, 1 thread          0 ... 7e-6 at step 10, 3e-4 at step 16, 7e-5 at step 20
    chunked, 2 threads vs 1 thread    0 ... 5e-6 at step 10, 1e-4 at step 16, 7e-4 at step 20

so from about step 12 on, AdamW losses agree only as well as the unchanged code agrees with
itself on another thread count. With SGD (no such amplification) the backends agree to under
1e-6 for all 20 steps: that is the strict check that the training arithmetic is the same.
The tests run with one thread so that the comparison is deterministic on a given machine.
"""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import mtad.ops.scan_cpp as scan_cpp
from mtad.models import MTAD

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                reason="no C++ compiler for the cpp scan backend")


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_losses(backend: str, optimizer: str, steps: int = 20) -> list[float]:
    torch.manual_seed(0)
    model = MTAD(encoder="efficientnet_lite0", depths=(1, 1, 1, 1), scan_backend=backend)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":      # the training recipe's optimiser and clipping
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    else:
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    # smooth 64 px images, roughly ImageNet-normalised
    images = F.interpolate(torch.rand(8, 3, 8, 8, generator=g), size=64, mode="bilinear")
    images = (images - 0.45) / 0.25
    losses = []
    for step in range(steps):
        loss = model.loss(images[(step % 4) * 2:(step % 4) * 2 + 2])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(loss.item())
    return losses


def assert_close_losses(ref, fast, rtol, steps):
    for step, (a, b) in enumerate(zip(ref[:steps], fast[:steps])):
        assert abs(a - b) <= rtol * abs(a), (step + 1, a, b, rtol)


def test_twenty_sgd_steps_equal_the_chunked_backend(one_thread):
    assert scan_cpp.load() is not None, scan_cpp.error()
    ref, fast = train_losses("chunked", "sgd"), train_losses("cpp", "sgd")
    assert ref[-1] < 0.5 * ref[0]                  # it trains at all
    assert_close_losses(ref, fast, 1e-5, 20)


def test_adamw_steps_equal_the_chunked_backend_to_rounding(one_thread):
    ref, fast = train_losses("chunked", "adamw"), train_losses("cpp", "adamw")
    assert ref[-1] < 0.5 * ref[0]
    assert_close_losses(ref, fast, 1e-5, 10)       # before AdamW's amplification builds up
    assert_close_losses(ref, fast, 1e-3, 20)       # the unchanged code's own thread-count spread
    assert abs(ref[-1] - fast[-1]) <= 1e-4 * ref[-1]   # the bar, after 20 steps
