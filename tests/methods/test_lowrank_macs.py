"""rankbench.methods.lowrank.macs: the one MAC counter (fvcore) against hand counts, and the per-layer
formulas against the counter."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rankbench.bench.models.builtin import build_model
from lowrank_refs import CONV_CASES, make_conv
from rankbench.methods import lowrank as L

def formula_macs(conv: nn.Conv2d, scheme: str, r: int, in_hw, out_hw) -> int:
    """The factorized pair's MACs per output pixel, by hand from the two layers each scheme builds,
    times the resolution each term runs at."""
    n, c, kh, kw = conv.weight.shape
    (hi, wi), (ho, wo) = in_hw, out_hw
    if scheme == "channel":
        return (r * c * kh * kw + n * r) * ho * wo
    if scheme == "spatial":  # the kh x 1 conv keeps the input width; the second term at output res
        return r * c * kh * ho * wi + n * r * kw * ho * wo
    return n * c * r * hi * wi + n * kh * kw * r * ho * wo  # decoupling: 1x1 at the input resolution


@pytest.mark.parametrize("scheme", L.CONV_SCHEMES)
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[1], CONV_CASES[3], CONV_CASES[4]],
                         ids=["s1", "s2", "nonsquare-s21", "same-dil"])
def test_factorized_macs_match_formula_and_the_counter(scheme, case):
    conv = make_conv(case, 6, 8).float()
    x = torch.randn(1, 6, 12, 10)
    out_hw = tuple(conv(x).shape[-2:])
    r = 3
    fact = L.factorize(conv, scheme, r)
    expected = formula_macs(conv, scheme, r, (12, 10), out_hw)
    assert L.factorized_macs(conv, scheme, r, out_hw, (12, 10)) == expected
    assert L.model_macs(fact, x) == expected  # symmetric "same" is rewritten as numbers, so fvcore sees it
    dense = 8 * 6 * conv.weight[0, 0].numel() * math.prod(out_hw)
    assert L.dense_macs(conv, out_hw) == dense
    if not isinstance(conv.padding, str):  # fvcore counts 0 for a conv with string padding (its trace op differs)
        assert L.model_macs(conv, x) == dense


def test_tiled_factorized_macs_match_formula_and_the_counter():
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
    x = torch.randn(1, 8, 10, 10)
    fact = L.factorize(conv, "channel", 3, tiles=4)
    expected = (3 * 8 * 9 + 12 * 4 * 3) * 5 * 5  # r*C*kh*kw + N*T*r per output pixel
    assert L.factorized_macs(conv, "channel", 3, (5, 5), tiles=4) == expected == L.model_macs(fact, x)


def test_linear_macs_match_formula_and_the_counter():
    lin = nn.Linear(20, 10)
    fact = L.factorize(lin, "linear", 4)
    assert L.factorized_macs(lin, "linear", 4) == 4 * (20 + 10) == L.model_macs(fact, torch.randn(1, 20))
    assert L.dense_macs(lin, (1, 1)) == 200 == L.model_macs(lin, torch.randn(1, 20))


class _Functional(nn.Module):
    """Convs and matmuls outside Conv2d/Linear modules (as in attention blocks) count too."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.proj = nn.Linear(4, 5)

    def forward(self, x):
        h = nn.functional.conv2d(x, self.w, padding=1)            # 4*3*9 per output pixel
        t = h.flatten(2).transpose(1, 2)                           # (B, HW, 4) tokens
        att = t @ t.transpose(1, 2)                                # HW x HW x 4
        return self.proj(torch.bmm(att, t)).mean(1)                # HW x 4 x HW, then HW x 4 x 5


# per image, by hand: resnet20 = first conv + 3 stages of 6 3x3 convs (one strided in stages 2, 3;
# shortcut A has no MACs) + fc; mlp = 64 -> 256 -> 128 -> 10; functional as _Functional's comments
HAND_MACS = {
    "resnet20": 16 * 27 * 32 * 32 + 6 * 16 * 144 * 32 * 32 + (32 * 144 + 5 * 32 * 288) * 16 * 16
                + (64 * 288 + 5 * 64 * 576) * 8 * 8 + 64 * 10,
    "mlp": 64 * 256 + 256 * 128 + 128 * 10,
    "functional": 4 * 27 * 36 + 36 * 36 * 4 + 36 * 4 * 36 + 36 * 4 * 5,
}


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 32, 32)), ("mlp", (1, 8, 8)), ("functional", (3, 6, 6))])
def test_model_macs_per_image_match_hand_counts_and_keep_the_model_mode(name, shape):
    model = _Functional() if name == "functional" else build_model(name, 10, shape)
    model.train()
    assert L.model_macs(model, torch.zeros(2, *shape)) == HAND_MACS[name]  # per image, whatever the batch
    assert L.model_macs(model, torch.zeros(1, *shape)) == HAND_MACS[name]
    assert all(m.training for m in model.modules())


def test_probe_layers_finds_each_layer_s_sizes_and_the_other_ops_macs():
    model = _Functional()
    probes, other = L.probe_layers(model, torch.zeros(2, 3, 6, 6))
    assert set(probes) == {"proj"} and probes["proj"].out_rows == 36 and probes["proj"].calls == 1
    assert other == HAND_MACS["functional"] - 36 * 4 * 5   # the functional conv and the two matmuls
