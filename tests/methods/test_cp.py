"""cp (Lebedev et al., ICLR 2015): a CP-rank-R kernel decomposed at R is reproduced, the four
convs compute the decomposed kernel, the MAC formula is fvcore's count, CP-ALS falls back to a
random start, speedup:S lands within 2%."""
from __future__ import annotations

import numpy as np
import pytest
import tensorly.decomposition
import torch
from torch import nn

from rankbench.bench.measure.metrics import count_macs
from rankbench.bench.models.builtin import build_model
from rankbench.methods import cp
from rankbench.methods.api import registry
from rankbench.methods.api.base import Context, start

CONVS = [  # (conv, input H, W): bias, stride and padding split per axis, dilation, padding modes
    (lambda: nn.Conv2d(6, 8, 3, padding=1), (9, 9)),
    (lambda: nn.Conv2d(5, 7, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), (11, 10)),
    (lambda: nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect", bias=False), (8, 7)),
    (lambda: nn.Conv2d(6, 4, 3, padding="valid", stride=(1, 2)), (9, 9)),
    (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, padding_mode="circular"), (8, 8)),
]


def _conv_with_kernel(make, kernel: np.ndarray) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = make().double().eval()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel))
    return conv


def _cp_kernel(shape, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.einsum("tr,sr,ir,jr->tsij", *[rng.standard_normal((n, rank)) for n in shape])


@pytest.mark.parametrize("i", range(len(CONVS)))
def test_kernel_of_cp_rank_r_decomposed_at_r_reproduces_the_dense_layer(i):
    make, hw = CONVS[i]
    shape = tuple(make().weight.shape)
    rank = 3
    conv = _conv_with_kernel(make, _cp_kernel(shape, rank, seed=i))
    layer, facts = cp.make_fill(iters=500)(conv, (rank,))
    assert facts["init"] == "svd" and facts["rel_error"] < 1e-5
    x = torch.randn(2, shape[1], *hw, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
        # CP-ALS stops when the relative error moves by < 1e-7: the fit is exact to about that
        assert (layer(x) - y).abs().max() <= 1e-5 * y.abs().max()


@pytest.mark.parametrize("i", range(len(CONVS)))
def test_four_convs_compute_the_cp_reconstruction_and_the_macs_are_fvcores_count(i):
    make, hw = CONVS[i]
    torch.manual_seed(1)
    conv = make().double().eval()
    t, s = conv.weight.shape[:2]
    rank = 5
    layer, facts = cp.make_fill(iters=50)(conv, (rank,))
    a, b, c, d = cp.decompose(conv.weight.detach().numpy(), rank, iters=50)[0]
    kernel = torch.from_numpy(np.einsum("tr,sr,ir,jr->tsij", a, b, c, d))
    ref = nn.Conv2d(s, t, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    padding_mode=conv.padding_mode, bias=conv.bias is not None).double()
    with torch.no_grad():
        ref.weight.copy_(kernel)
        if conv.bias is not None:
            ref.bias.copy_(conv.bias)
        x = torch.randn(2, s, *hw, dtype=torch.float64)
        out = layer(x)
        assert torch.allclose(out, ref(x), rtol=0, atol=1e-9)
    assert [m.groups for m in layer] == [1, rank, rank, 1]
    assert (layer[3].bias is not None) == (conv.bias is not None)  # the bias rides on the last 1x1 conv
    # balanced factors: every factor carries the same scale (lambda^(1/4)) per component
    norms = np.stack([np.linalg.norm(f, axis=0) for f in (a, b, c, d)])
    assert np.allclose(norms, norms[0], rtol=1e-9)
    assert cp.macs(conv, (rank,), hw, out.shape[-2:]) == count_macs(layer.float(), (s, *hw))


def test_cp_als_falls_back_to_a_random_start_then_fails_naming_the_layer(monkeypatch):
    real = tensorly.decomposition.parafac
    seen = []

    def svd_start_diverges(tensor, rank, **kw):
        seen.append(kw["init"])
        res = real(tensor, rank, **kw)
        if kw["init"] == "svd":
            res.factors[0][:] = np.nan
        return res

    monkeypatch.setattr(tensorly.decomposition, "parafac", svd_start_diverges)
    conv = nn.Conv2d(4, 6, 3).double()
    _, facts = cp.make_fill(iters=20)(conv, (4,))
    assert seen == ["svd", "random"] and facts["init"] == "random" and facts["rel_error"] < 1

    def always_nan(tensor, rank, **kw):
        res = real(tensor, rank, **kw)
        res.factors[1][:] = np.inf
        return res

    monkeypatch.setattr(tensorly.decomposition, "parafac", always_nan)
    with pytest.raises(RuntimeError, match=r"^layer \(6, 4, 3, 3\): CP-ALS at rank 4 failed"):
        cp.make_fill(iters=20)(conv, (4,))


def _ctx(shape=(3, 32, 32)) -> Context:
    return Context(input_shape=shape, num_classes=10, steps_per_epoch=1, epochs=1)


@pytest.mark.parametrize("speedup", [2.0, 3.0])
def test_speedup_rule_lands_within_2_percent_on_resnet20(speedup):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32)).eval()
    m = registry.build("cp", {"rule": f"speedup:{speedup}", "iters": 3})  # MACs do not depend on the fit
    start(m, model, _ctx())
    small = m.compress(model).eval()
    got = count_macs(model, (3, 32, 32)) / count_macs(small, (3, 32, 32))
    assert got == pytest.approx(speedup, rel=0.02)
    done = [r for r in m.report().layers if r["rank"] is not None]
    assert done and all(r["scheme"] == "cp" and isinstance(r["rank"], int) and r["rel_error"] < 1 for r in done)
    assert isinstance(small.get_submodule(done[0]["name"]), cp.CPConv)


def test_rank_rules_parameters_and_reachability():
    assert registry.get_method("cp").starts_from_baseline
    m = registry.build("cp", {})
    assert m.finetune_epochs > 0 and m.rule == "ratio:0.5"
    with pytest.raises(ValueError, match=r'^rule: \'energy:0.9\'; accepted: "rank:R"'):
        registry.build("cp", {"rule": "energy:0.9"})
    with pytest.raises(ValueError, match=r"^iters: 0; accepted: an int >= 1"):
        registry.build("cp", {"iters": 0})
    model = build_model("cnn", 10, (1, 8, 8)).eval()
    for rule, want in (("rank:7", [7, 7, 7]), ("ratio:0.25", [8, 8, 16])):  # max(S, T): 32, 32, 64
        m = registry.build("cp", {"rule": rule, "iters": 3})
        start(m, model, _ctx((1, 8, 8)))
        m.compress(model)
        assert [r["rank"] for r in m.report().layers if r["rank"] is not None] == want
    with pytest.raises(ValueError, match=r"^rule: 'speedup:500.0': not reachable with these layers; accepted: speedup up to"):
        start(registry.build("cp", {"rule": "speedup:500"}), model, _ctx((1, 8, 8)))
