"""rankbench.methods.lowrank.schemes and .factorized: matrix views, tiles, and factorized layers that compute
the dense layer (exactly at full rank, the rank-r reconstruction below it)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank_refs import CONV_CASES, make_conv, ref_matrix, ref_reconstruct, ref_tiled_reconstruct
from rankbench.methods import lowrank as L

@pytest.mark.parametrize("scheme", L.CONV_SCHEMES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_full_rank_factorization_reproducesmake_conv(scheme, case):
    conv = make_conv(case)
    x = torch.randn(2, 5, 13, 11, dtype=torch.float64)
    fact = L.factorize(conv, scheme, L.full_rank(conv, scheme))
    y, yf = conv(x), fact(x)
    assert yf.shape == y.shape
    assert (yf - y).abs().max() < 1e-5


@pytest.mark.parametrize("scheme", L.CONV_SCHEMES)
@pytest.mark.parametrize("case", CONV_CASES[:5], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_rank_r_factorization_equals_dense_with_reconstructed_weight(scheme, case):
    conv = make_conv(case)
    r = 2
    ref = make_conv(case)
    with torch.no_grad():
        ref.weight.copy_(ref_reconstruct(conv.weight, scheme, r))
    x = torch.randn(2, 5, 12, 12, dtype=torch.float64)
    fact = L.factorize(conv, scheme, r)
    assert fact.rank == r and fact.scheme == scheme
    assert (fact(x) - ref(x)).abs().max() < 1e-8
    assert not torch.allclose(fact(x), conv(x), atol=1e-3)  # rank 2 really is an approximation
    assert torch.allclose(L.reconstruct(conv.weight.detach(), scheme, r), ref.weight, atol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_scheme_full_and_rank_r(bias):
    torch.manual_seed(1)
    lin = nn.Linear(12, 9, bias=bias).double()
    x = torch.randn(4, 3, 12, dtype=torch.float64)  # extra leading dim: applied per row
    assert (L.factorize(lin, "linear", 9)(x) - lin(x)).abs().max() < 1e-5
    ref = nn.Linear(12, 9, bias=bias).double()
    with torch.no_grad():
        ref.weight.copy_(ref_reconstruct(lin.weight, "linear", 3))
        if bias:
            ref.bias.copy_(lin.bias)
    assert (L.factorize(lin, "linear", 3)(x) - ref(x)).abs().max() < 1e-8


@pytest.mark.parametrize("scheme", L.SCHEMES)
def test_matrix_views_match_reference_and_invert(scheme):
    w = torch.randn(7, 7) if scheme == "linear" else torch.randn(6, 4, 3, 2)
    m = L.to_matrix(w, scheme)
    assert torch.equal(m, ref_matrix(w, scheme))
    assert torch.equal(L.from_matrix(m, scheme, w.shape), w)


@pytest.mark.parametrize("case", CONV_CASES[:5], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_tiled_channel_factorization_full_rank_and_rank_r(case):
    conv = make_conv(case, cin=6, cout=7)
    x = torch.randn(2, 6, 12, 12, dtype=torch.float64)
    full = L.full_rank(conv, "channel", 3)
    assert full == min(7, 2 * conv.weight[0, 0].numel())
    assert (L.factorize(conv, "channel", full, tiles=3)(x) - conv(x)).abs().max() < 1e-5
    ref = make_conv(case, cin=6, cout=7)
    with torch.no_grad():
        ref.weight.copy_(ref_tiled_reconstruct(conv.weight, 3, 2))
    fact = L.factorize(conv, "channel", 2, tiles=3)
    assert fact[0].groups == 3 and fact[0].out_channels == 6 and fact.tiles == 3
    assert (fact(x) - ref(x)).abs().max() < 1e-8
    assert torch.allclose(L.reconstruct(conv.weight.detach(), "channel", 2, tiles=3), ref.weight, atol=1e-10)


def test_tiles_errors_name_the_field():
    with pytest.raises(ValueError, match="^tiles: 4: does not divide the layer's 6 input channels; accepted: a divisor of 6"):
        L.to_matrix(torch.randn(7, 6, 3, 3), "channel", 4)
    with pytest.raises(ValueError, match="^tiles: 2: with scheme 'spatial'; accepted: tiles > 1 only with scheme 'channel'"):
        L.check_tiles("spatial", 2)
    with pytest.raises(ValueError, match="^tiles: 0; accepted: an int >= 1"):
        L.check_tiles("channel", 0)
    assert L.layer_tiles(nn.Conv2d(6, 4, 3), "channel", 4) == 1  # does not divide: untiled
    assert L.layer_tiles(nn.Conv2d(8, 4, 3), "channel", 4) == 4


def test_scheme_for_reports_why_a_layer_stays_dense():
    assert L.scheme_for(nn.Conv2d(4, 4, 3), "channel") is None
    assert "grouped" in L.scheme_for(nn.Conv2d(4, 4, 3, groups=2), "channel")
    assert "1x1" in L.scheme_for(nn.Conv2d(4, 4, 1), "spatial")
    assert L.scheme_for(nn.Conv2d(4, 4, 1), "channel") is None  # a 1x1 conv is a matrix: channel SVD works
    assert "nn.Linear" in L.scheme_for(nn.Conv2d(4, 4, 3), "linear")
    assert "Conv2d" in L.scheme_for(nn.Linear(4, 4), "channel")
    with pytest.raises(ValueError, match=r"^scheme: 'tucker'; accepted: channel, spatial, linear, decoupling"):
        L.scheme_for(nn.Linear(4, 4), "tucker")
    with pytest.raises(ValueError, match=r"^rank: 0; accepted: an int in \[1, 4\]"):
        L.factorize(nn.Conv2d(4, 4, 3), "channel", 0)
    with pytest.raises(ValueError, match=r"depthwise conv \(groups=4\): channel scheme needs groups=1"):
        L.factorize(nn.Conv2d(4, 4, 3, groups=4), "channel", 1)
