"""The MTAD model: official sizes, parts that must behave as the spec says."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from mtad.models import MTAD, MTADConfig, parameter_table
from mtad.models.encoder import Encoder, EncoderWeightsError
from mtad.models.mtad import gaussian_blur
from mtad.models.mtrec import (LinearAttention, sincos_position_embedding, window_merge,
                               window_partition)

TINY = dict(encoder="efficientnet_lite0", depths=(1, 1, 2, 1), drop_path=0.0)


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)
    return MTAD()


def test_official_parameter_counts(official):
    counts = dict(parameter_table(official))
    expected = {
        "encoder": 8.170e6, "neck": 1.458e6, "decoder": 32.965e6,
        "decoder.levels[0]": 20.234e6, "decoder.levels[1]": 9.000e6,
        "decoder.levels[2]": 3.232e6, "decoder.levels[3]": 0.499e6,
        "decoder.levels[0].blocks[0]": 6.745e6, "decoder.levels[1].upsample": 2.098e6,
        "decoder.levels[2].upsample": 0.525e6, "decoder.levels[3].upsample": 0.131e6,
    }
    for name, value in expected.items():
        assert abs(counts[name] - value) <= 500, (name, counts[name])  # the table's 4 digits
    # exact, as the official model counts them (its three neck 1x1 convs have biases)
    assert counts["total"] == 42_593_792 and counts["neck"] == 1_458_304
    assert counts["total"] == counts["encoder"] + counts["neck"] + counts["decoder"]
    assert len(official.decoder.levels) == 4
    assert [len(level.blocks) for level in official.decoder.levels] == [3, 4, 6, 3]


def test_official_initialisation(official):
    level = official.decoder.levels[1]
    mamba = level.blocks[2].block.mamba
    assert torch.equal(mamba.A_log[5], torch.log(torch.arange(1, 9, dtype=torch.float32)))
    assert torch.equal(mamba.D, torch.ones_like(mamba.D))
    assert torch.count_nonzero(mamba.dt_proj.bias) == 0  # reset with every Linear
    std = mamba.in_proj.weight.std().item()
    assert 0.018 < std < 0.022  # trunc-normal(std 0.02) as timm draws it: seeded, not rounding
    fuse = level.blocks[0].fuse
    assert abs(fuse.weight.std().item() - (2 / 256) ** 0.5) < 0.01  # He init, sampling spread
    # drop-path rises linearly 0 -> 0.2 over all 16 blocks in order
    rates = [getattr(b.block.drop_path, "drop_prob", 0.0)
             for lv in official.decoder.levels for b in lv.blocks]
    # float32 linspace: 0.2 is off by its last bit (1.5e-8)
    assert rates[0] == 0.0 and abs(rates[-1] - 0.2) < 1e-6 and len(rates) == 16
    assert all(b > a for a, b in zip(rates, rates[1:]))
    # block i of every level scans along variant i
    assert not torch.equal(level.blocks[0].block.mamba.perm, level.blocks[1].block.mamba.perm)
    pos = level.blocks[0].pos_embed
    assert not pos.requires_grad and "decoder.levels.1.blocks.0.pos_embed" in official.state_dict()


def test_official_shapes(official):
    x = torch.randn(1, 3, 256, 256)
    features, recon = official(x)
    assert [tuple(f.shape[1:]) for f in features] == [(64, 64, 64), (128, 32, 32), (256, 16, 16)]
    assert [r.shape for r in recon] == [f.shape for f in features]
    assert tuple(official.neck(features).shape) == (1, 512, 8, 8)


def test_encoder_stays_frozen():
    torch.manual_seed(0)
    model = MTAD(**TINY)
    model.train()
    assert not model.encoder.net.training
    assert all(not p.requires_grad for p in model.encoder.parameters())
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    loss = model.loss(torch.randn(2, 3, 64, 64))
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.decoder.levels[3].blocks[0].fuse.weight.grad.abs().sum() > 0
    assert model.neck.down1[0].weight.grad.abs().sum() > 0
    for k, v in model.encoder.state_dict().items():  # BN running stats untouched
        assert torch.equal(v, before[k]), k


def test_loss_and_predict_definitions():
    torch.manual_seed(0)
    model = MTAD(**TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features, recon = model(x)
    expected = sum(5 * F.mse_loss(r, f) for f, r in zip(features, recon))
    # the same forward twice on one machine, the same ops: equal up to summation order
    assert torch.allclose(model.loss(x), expected)
    maps, scores = model.predict(x)
    assert maps.shape == (2, 1, 64, 64)
    assert torch.allclose(scores, maps.flatten(1).max(1).values)
    raw = sum(F.interpolate(1 - F.cosine_similarity(f, r).unsqueeze(1), size=(64, 64),
                            mode="bilinear", align_corners=True) for f, r in zip(features, recon))
    raw = raw / 9  # the official scale: / (len(scales) * sum(weights))
    smoothed = gaussian_filter(raw[0, 0].numpy().astype(np.float64), sigma=4, truncate=4)
    # the blur in float32: two passes of 33-tap sums with positive weights that add up to 1,
    # each within 33 roundings (2^-24) of the largest input: 128 * 2^-24 * max bounds it on
    # any CPU; a wrong sigma, padding or scale is off by > 1e-3 of the range
    assert np.abs(maps[0, 0].numpy() - smoothed).max() <= 128 * 2 ** -24 * smoothed.max()


@pytest.mark.parametrize("size", [(256, 256), (40, 33), (9, 12)])
def test_gaussian_blur_matches_scipy(size):
    rng = np.random.default_rng(0)
    m = rng.random(size).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(m)[None, None], 4.0)[0, 0].numpy()
    ref = gaussian_filter(m.astype(np.float64), sigma=4, truncate=4, mode="reflect")
    # float32 two-pass 33-tap blur of values in [0, 1): see test_loss_and_predict_definitions
    assert np.abs(ours - ref).max() <= 128 * 2 ** -24


def test_windows_round_trip_with_padding():
    x = torch.randn(2, 8, 20, 37)
    tokens, shape = window_partition(x, 16)
    assert tokens.shape == (2 * 2 * 3, 256, 8)
    assert torch.equal(window_merge(tokens, 16, shape), x)
    # tokens are row-major inside a window
    assert torch.equal(tokens[0, 17], x[0, :, 1, 1])
    small, _ = window_partition(torch.randn(1, 4, 8, 8), 16)
    assert small.shape == (1, 256, 4) and torch.count_nonzero(small[0, 8:16]) == 0


def test_position_embedding_fixed_and_distinct():
    pe = sincos_position_embedding(64, 16)
    assert pe.shape == (256, 64)
    assert torch.unique(pe, dim=0).shape[0] == 256
    steps = torch.arange(16.0)
    assert torch.allclose(pe[:, 0], torch.sin(steps).repeat(16), atol=1e-6)  # column first
    assert torch.allclose(pe[:, 32], torch.sin(steps).repeat_interleave(16), atol=1e-6)  # row
    with pytest.raises(ValueError):
        sincos_position_embedding(30, 16)


def test_linear_attention_matches_explicit_formula():
    torch.manual_seed(0)
    attn = LinearAttention(16, heads=2)
    x = torch.randn(3, 10, 16)
    q, k, v = attn.qkv(x).reshape(3, 10, 3, 2, 8).unbind(2)
    phi = lambda t: F.elu(t) + 1  # noqa: E731
    out = torch.zeros(3, 10, 2, 8)
    for b in range(3):
        for h in range(2):
            qq, kk, vv = phi(q[b, :, h]), phi(k[b, :, h]), v[b, :, h]
            for s in range(10):
                num = sum((qq[s] @ kk[t]) * vv[t] for t in range(10))
                den = sum(qq[s] @ kk[t] for t in range(10))
                out[b, s, h] = num / den
    # float32 sums of 10 terms (values ~1) in another order, a division: ~20 roundings (1e-6)
    assert torch.allclose(attn(x), attn.proj(out.reshape(3, 10, 16)), atol=1e-5)


@pytest.mark.parametrize("attention", ["softmax", "none"])
def test_attention_ablations_run(attention):
    model = MTAD(**TINY, attention=attention)
    assert model.loss(torch.randn(1, 3, 64, 64)).isfinite()
    has_attn = model.decoder.levels[0].blocks[0].block.attn is not None
    assert has_attn == (attention == "softmax")


def test_config_rejects_unknown_and_invalid():
    with pytest.raises(ValueError, match="attn"):
        MTADConfig.from_dict({"attn": "linear"})
    with pytest.raises(ValueError, match="attention"):
        MTADConfig(attention="quadratic")
    with pytest.raises(ValueError, match="scan_order"):
        MTADConfig(scan_order="spiral")


def test_widths_follow_the_encoder():
    model = MTAD(**TINY)
    assert model.encoder.channels == [24, 40, 112]
    assert [lv.blocks[0].fuse.out_channels for lv in model.decoder.levels] == [224, 112, 40, 24]


def test_encoder_weights_file_errors_name_the_keys(tmp_path):
    enc = Encoder("resnet18")
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in enc.net.state_dict().items()}}, good)
    loaded = Encoder("resnet18", weights=str(good))
    assert torch.equal(loaded.net.state_dict()["conv1.weight"], enc.net.state_dict()["conv1.weight"])
    bad = dict(enc.net.state_dict())
    bad.pop("layer1.0.conv1.weight")
    bad["head.extra"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(EncoderWeightsError, match="layer1.0.conv1.weight") as err:
        Encoder("resnet18", weights=str(tmp_path / "bad.pt"))
    assert "head.extra" in str(err.value)
    with pytest.raises(EncoderWeightsError, match="not found"):
        Encoder("resnet18", weights=str(tmp_path / "missing.pt"))


def test_packaged_efficientnet_weights_are_real_imagenet_weights():
    import timm
    from skimage import data

    from mtad.models.encoder import _packaged_state_dict

    net = timm.create_model("efficientnet_lite0")
    net.load_state_dict(_packaged_state_dict("efficientnet_lite0"))
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for image, label in ((data.chelsea(), 285), (data.coffee(), 967)):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            assert net((x - mean) / std).argmax().item() == label
    enc = Encoder("efficientnet_lite0", weights="packaged")
    assert torch.equal(enc.net.state_dict()["conv_stem.weight"], net.state_dict()["conv_stem.weight"])


@pytest.mark.slow
def test_model_runs_without_mamba_ssm_and_triton():
    code = (
        "import sys; sys.modules['mamba_ssm'] = None; sys.modules['triton'] = None\n"
        "import torch; from mtad.models import MTAD\n"
        "m = MTAD(encoder='efficientnet_lite0', depths=(1, 1, 1, 1))\n"
        "print(m.predict(torch.randn(1, 3, 64, 64)).pred_score.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1])" in out.stdout


def test_flop_count_adds_the_scan_analytically():
    from mtad.models.complexity import count_flops, describe, scan_flops

    model = MTAD(**TINY)
    flops = count_flops(model, 64)
    assert set(flops["counted"]) == {"encoder", "neck", "decoder"}
    assert all(v > 0 for v in flops["counted"].values())
    # one window of 256 tokens per image at every level (maps of 2..16 cells are padded)
    expected = sum(scan_flops(1, dim, 256, 8) * depth
                   for dim, depth in zip([224, 112, 40, 24], TINY["depths"]))
    assert flops["scan"] == expected
    text = describe(MTADConfig(**TINY), 64)
    assert "selective scan (analytic)" in text and "decoder.levels[3]" in text
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,d}" in text.split("total")[1].splitlines()[0]  # the exact count
