"""rankbench.methods.lowrank.layers and .decompose: layer choice, whole-model decomposition, rebuilding from
reports, and the speedup rule."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rankbench.bench.models.builtin import build_model
from rankbench.methods import lowrank as L

def test_select_layers_official_choice_on_resnet20():
    model = build_model("resnet20", 10, (3, 32, 32))
    names = L.select_layers(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert names == convs[1:] and len(names) == 18
    no_s2 = L.select_layers(model, include_stride2=False)
    assert set(names) - set(no_s2) == {"layer2.0.conv1", "layer3.0.conv1"}
    b = build_model("resnet20", 10, (3, 32, 32), shortcut="B")
    reasons = dict(L.layer_reasons(b))
    assert "1x1" in reasons["layer2.0.shortcut.0"] and "first conv" in reasons["conv1"]
    assert reasons["fc"] == "linear layers not selected"


def test_decompose_model_reports_copies_and_rebuilds():
    model = build_model("resnet20", 10, (3, 32, 32), shortcut="B").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    small, reports = L.decompose_model(model, "channel", "rank:4", example_input=x)
    # input untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.layer1[0].conv1, nn.Conv2d)
    by_name = {r["name"]: r for r in reports}
    assert set(by_name) == {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    r = by_name["layer1.0.conv1"]
    assert r["rank"] == 4 and r["full_rank"] == 16 and r["skipped"] is None and r["shape"] == [16, 16, 3, 3]
    assert r["tiles"] == 1
    assert r["dense_macs"] == 16 * 16 * 9 * 32 * 32 and r["macs"] == (4 * 16 * 9 + 16 * 4) * 32 * 32
    assert by_name["conv1"]["skipped"].startswith("first conv") and by_name["conv1"]["macs"] == by_name["conv1"]["dense_macs"]
    assert "1x1" in by_name["layer2.0.shortcut.0"]["skipped"]
    assert isinstance(small.get_submodule("layer1.0.conv1"), L.Factorized)
    assert small(x).shape == (2, 10)
    # whole-model MACs: decomposed layers at their factorized cost, the rest at dense cost
    other = L.model_macs(model, x) - sum(r["dense_macs"] for r in reports)
    assert L.model_macs(small, x) == other + sum(r["macs"] for r in reports)
    # the reports rebuild the same structure, so a saved state dict loads
    fresh = L.build_factorized(build_model("resnet20", 10, (3, 32, 32), shortcut="B"), reports).eval()
    fresh.load_state_dict(small.state_dict())
    assert torch.allclose(fresh(x), small(x), atol=1e-6)


def test_decompose_model_with_tiles_rebuilds_from_reports():
    model = build_model("cnn", 10, (1, 8, 8)).eval()
    x = torch.randn(2, 1, 8, 8)
    small, reports = L.decompose_model(model, "channel", "rank:2", example_input=x, tiles=4)
    by = {r["name"]: r for r in reports}
    assert by["3"]["tiles"] == 4 and by["3"]["rank"] == 2 and by["3"]["full_rank"] == 32  # min(32 out, 4 channels * 9)
    assert small.get_submodule("3")[0].groups == 4
    fresh = L.build_factorized(build_model("cnn", 10, (1, 8, 8)), reports).eval()
    fresh.load_state_dict(small.state_dict())
    assert torch.allclose(fresh(x), small(x), atol=1e-6)


def test_decompose_model_keeps_layers_dense_when_factors_cost_more():
    model = build_model("cnn", 10, (1, 8, 8))
    x = torch.randn(1, 1, 8, 8)
    small, reports = L.decompose_model(model, "channel", "energy:1.0", example_input=x)
    chosen = [r for r in reports if r["full_rank"]]
    assert chosen and all("factorized MACs" in r["skipped"] for r in chosen)
    assert L.model_macs(small, x) == L.model_macs(model, x)
    small, reports = L.decompose_model(model, "channel", "energy:1.0", example_input=x, keep_dense_if_larger=False)
    assert all(r["rank"] == r["full_rank"] for r in reports if r["full_rank"])


def test_decompose_model_errors_name_the_field():
    model = build_model("cnn", 10, (1, 8, 8))
    with pytest.raises(ValueError, match=r"^layers: \['nope'\]: not Conv2d/Linear layers of the model; accepted: 0, 3, 6, 9, 14$"):
        L.decompose_model(model, "channel", "rank:2", layers=["nope"])
    with pytest.raises(ValueError, match="^layers: 'some'; accepted: official, all"):
        L.decompose_model(model, "channel", "rank:2", layers="some")
    with pytest.raises(ValueError, match="^example_input: missing; accepted: an example batch: rule speedup:2.0"):
        L.decompose_model(model, "channel", "speedup:2")
    x = torch.zeros(1, 1, 8, 8)
    best = L.max_speedup(model, "channel", x)
    with pytest.raises(ValueError, match=rf"^rule: 'speedup:1000.0': not reachable.*; accepted: speedup up to {best:.3f}"):
        L.decompose_model(model, "channel", "speedup:1000", example_input=x)
    with pytest.raises(ValueError, match=rf"^export: 'speedup:1000.0': not reachable.*up to {best:.3f}"):
        L.check_reachable(model, "channel", "speedup:1000", x, field="export")
    L.check_reachable(model, "channel", f"speedup:{best * 0.99}", x)  # reachable: no error
    # max_speedup really is what rank 1 everywhere gives
    small, reports = L.decompose_model(model, "channel", "rank:1", example_input=x)
    assert L.model_macs(model, x) / L.model_macs(small, x) == pytest.approx(best)


def test_decompose_linear_scheme_on_mlp_and_explicit_layers():
    model = build_model("mlp", 10, (1, 8, 8))
    x = torch.randn(3, 1, 8, 8)
    small, reports = L.decompose_model(model, "linear", "rank:8", layers=["1"], example_input=x)
    by = {r["name"]: r for r in reports}
    assert by["1"]["rank"] == 8 and by["3"]["skipped"] == "not in layers"
    assert by["1"]["macs"] == 8 * (64 + 256)
    assert small(x).shape == (3, 10)


@pytest.mark.parametrize("scheme", L.CONV_SCHEMES)
def test_target_speedup_within_2_percent_on_resnet20(scheme):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32))
    x = torch.zeros(1, 3, 32, 32)
    small, reports = L.decompose_model(model, scheme, "speedup:2.0", example_input=x)
    dense, macs = L.model_macs(model, x), L.model_macs(small, x)  # the counter the result row uses
    assert abs(dense / macs - 2.0) / 2.0 < 0.02
    ranks = [r["rank"] for r in reports if r["rank"] is not None]
    assert len(ranks) >= 12 and len(set(ranks)) > 1  # one global threshold, per-layer ranks


def _two_layer_plan_spectra() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Two 16x16 linears of the same cost per rank, with spectra of different shapes (one
    decaying exponentially, one like 1 / sqrt(a))."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    a = torch.arange(16, dtype=torch.float64)
    return model, {"0": torch.exp(-0.2 * a), "2": 1 / torch.sqrt(1 + a)}


def test_product_allocation_keeps_the_most_energy_product_within_the_budget():
    model, spectra = _two_layer_plan_spectra()
    x = torch.zeros(1, 16)
    # dense: 256 + 256 + 64 (the last layer stays dense); speedup 2 leaves 224 MACs = 7 ranks of 32
    _, reports = L.decompose_model(model, "linear", "speedup:2.0", layers=["0", "2"], example_input=x,
                                   spectra=spectra, allocation="product")
    got = {r["name"]: r["rank"] for r in reports if r["rank"] is not None}
    assert got["0"] + got["2"] == 7

    def log_product(r0: int, r2: int) -> float:
        e = lambda s, r: float(s[:r].square().sum())   # noqa: E731
        return math.log(e(spectra["0"], r0)) + math.log(e(spectra["2"], r2))

    best = max(range(1, 7), key=lambda r0: log_product(r0, 7 - r0))   # every split of the budget
    assert got["0"] == best
    # one energy threshold for both layers spends the same budget worse on this pair
    _, thr = L.decompose_model(model, "linear", "speedup:2.0", layers=["0", "2"], example_input=x,
                               spectra=spectra, allocation="threshold")
    t = {r["name"]: r["rank"] for r in thr if r["rank"] is not None}
    assert t["0"] + t["2"] <= 7 and log_product(t["0"], t["2"]) < log_product(got["0"], got["2"])
    with pytest.raises(ValueError, match=r"^allocation: 'greedy'; accepted: threshold, product$"):
        L.decompose_model(model, "linear", "speedup:2.0", example_input=x, allocation="greedy")
