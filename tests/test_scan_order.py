import numpy as np
import pytest
import torch

from mtad.models.scan_order import (NUM_VARIANTS, ORDERS, dihedral_variants, hilbert_rank_map,
                                    inverse_order, neighbour_fraction, scan_order)

VARIANTS = range(NUM_VARIANTS)


def _steps(perm, size):
    p = perm.long()
    r, c = p // size, p % size
    return (r[1:] - r[:-1]).abs() + (c[1:] - c[:-1]).abs()


@pytest.mark.parametrize("size", [2, 4, 8, 16, 32])
def test_hilbert_steps_only_to_4_neighbours(size):
    for v in VARIANTS:
        steps = _steps(scan_order("hilbert", v, size), size)
        assert torch.all(steps == 1), (size, v)
        assert neighbour_fraction(scan_order("hilbert", v, size), size) == 1.0


def test_hilbert_rank_map_is_the_classic_curve():
    # 4x4 classic Hilbert curve: starts top-left, first step down, ends bottom-left
    expected = np.array([[0, 3, 4, 5],
                         [1, 2, 7, 6],
                         [14, 13, 8, 9],
                         [15, 12, 11, 10]])
    np.testing.assert_array_equal(hilbert_rank_map(4), expected)


@pytest.mark.parametrize("name", ORDERS)
@pytest.mark.parametrize("size", [4, 16])
def test_every_order_is_a_permutation_and_round_trips(name, size):
    x = torch.randn(3, size * size, 5)
    for v in VARIANTS:
        perm = scan_order(name, v, size)
        assert perm.dtype == torch.long and perm.shape == (size * size,)
        assert torch.equal(perm.sort().values, torch.arange(size * size))
        inv = inverse_order(perm)
        assert torch.equal(x[:, perm][:, inv], x)
        assert torch.equal(x[:, inv][:, perm], x)


@pytest.mark.parametrize("size", [8, 16])
def test_official_is_inverse_of_hilbert(size):
    for v in VARIANTS:
        off, hil = scan_order("official", v, size), scan_order("hilbert", v, size)
        assert torch.equal(off, inverse_order(hil))
        assert torch.equal(off[hil], torch.arange(size * size))
        assert not torch.equal(off, hil)


def test_official_neighbour_fraction_is_about_47_percent():
    for v in VARIANTS:
        perm = scan_order("official", v, 16)
        frac = neighbour_fraction(perm, 16)
        assert int((_steps(perm, 16) == 1).sum()) == 120
        assert frac == pytest.approx(120 / 255)   # 0.4706; a ratio of counts, exact
        assert frac < 0.5


def test_official_uses_the_rank_map_as_gather_index():
    maps = dihedral_variants(hilbert_rank_map(16))
    expected = [hilbert_rank_map(16)]
    expected.append(expected[0].T)
    for k in (1, 2, 3):
        r = np.rot90(expected[0], k)
        expected += [r, r.T]
    for v in VARIANTS:
        np.testing.assert_array_equal(maps[v], expected[v])
        flat = torch.from_numpy(expected[v].reshape(-1).copy())
        assert torch.equal(scan_order("official", v, 16), flat)


@pytest.mark.parametrize("name", ORDERS)
def test_the_eight_variants_are_distinct(name):
    perms = {tuple(scan_order(name, v, 16).tolist()) for v in VARIANTS}
    assert len(perms) == NUM_VARIANTS


def test_sweep_and_zigzag_base_orders():
    assert torch.equal(scan_order("sweep", 0, 4), torch.arange(16))
    assert torch.equal(scan_order("sweep", 1, 4), torch.arange(16).view(4, 4).t().reshape(-1))
    assert scan_order("zigzag", 0, 4).tolist() == [0, 1, 2, 3, 7, 6, 5, 4,
                                                   8, 9, 10, 11, 15, 14, 13, 12]
    for v in VARIANTS:
        assert torch.all(_steps(scan_order("zigzag", v, 16), 16) == 1)
        assert neighbour_fraction(scan_order("sweep", v, 16), 16) == pytest.approx(240 / 255)  # exact


def test_unknown_name_variant_and_size_raise():
    with pytest.raises(ValueError, match="official"):
        scan_order("spiral")
    with pytest.raises(ValueError):
        scan_order("hilbert", 8)
    with pytest.raises(ValueError, match="power-of-two"):
        scan_order("hilbert", 0, 12)
    assert scan_order("sweep", 3, 12).shape == (144,)


def test_permute_tokens_equals_indexing_in_values_and_gradient():
    from mtad.models.scan_order import permute_tokens

    perm = scan_order("official", 5, 8)
    inv = inverse_order(perm)
    x = torch.randn(3, 64, 5, dtype=torch.float64)
    g = torch.randn(3, 64, 5, dtype=torch.float64)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya, yb = permute_tokens(a, perm, inv), b[:, perm]
    assert torch.equal(ya, yb)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(a.grad, b.grad)
    with torch.no_grad():                       # the plain gather path (export, inference)
        assert torch.equal(permute_tokens(x, perm, inv), x[:, perm])
    assert torch.equal(permute_tokens(permute_tokens(x, perm, inv), inv, perm), x)
