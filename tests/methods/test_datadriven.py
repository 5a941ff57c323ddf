"""``zhang`` and ``jaderberg``: the data-driven decompositions. Exact at full rank (float64), the
closed-form fits against independent references, MACs equal to fvcore's count, ``speedup:S``
within 2%, the calibration batches they read, and their parameter errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rankbench.bench.models.builtin import build_model
from rankbench.methods import lowrank as L
from rankbench.methods.api import registry
from rankbench.methods.api.base import Context
from rankbench.methods.jaderberg import fit_spatial, patches
from rankbench.methods.zhang import fit_channel


def _conv(bias: bool, stride: int = 1, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(4, 6, 3, stride=stride, padding=1, bias=bias).double()


def _smooth(n: int, seed: int) -> torch.Tensor:
    """Inputs with correlated pixels and channels (a blurred random field): where a data fit differs from the SVD."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 10, 10, generator=g, dtype=torch.float64)
    x = nn.functional.avg_pool2d(x, 3, 1, 1) + 0.5 * x.mean(1, keepdim=True)
    return x


def _moments(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        y = conv(x).transpose(1, -1).reshape(-1, conv.out_channels)
    return y.T @ y / len(y), y.mean(0), y


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_zhang_full_rank_reproduces_the_layer_in_float64(bias, stride):
    conv = _conv(bias, stride)
    second, mean, _ = _moments(conv, _smooth(8, 0))
    fact = L.factorize(conv, "channel", L.full_rank(conv, "channel"))
    with torch.no_grad():
        fit_channel(conv, fact, second, mean)
        x = _smooth(3, 1)          # other inputs than the calibration ones
        assert torch.allclose(fact(x), conv(x), atol=1e-6)


def test_zhang_rank_r_is_the_pca_of_the_responses():
    conv = _conv(bias=True)
    second, mean, y = _moments(conv, _smooth(8, 0))
    fact = L.factorize(conv, "channel", 2)
    with torch.no_grad():
        info = fit_channel(conv, fact, second, mean)
        got = fact(_smooth(8, 0)).transpose(1, -1).reshape(-1, 6)
    centred = y - y.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)    # PCA by SVD of the responses
    expected = centred @ vh[:2].T @ vh[:2] + y.mean(0)
    assert torch.allclose(got, expected, atol=1e-8)
    assert info["explained"] == pytest.approx(float((s[:2] ** 2).sum() / (s ** 2).sum()), rel=1e-9)


@pytest.mark.parametrize("bias", [True, False])
def test_jaderberg_full_rank_reproduces_the_layer_in_float64(bias):
    conv = _conv(bias)
    p = patches(conv, _smooth(8, 0))
    fact = L.factorize(conv, "spatial", L.full_rank(conv, "spatial"))
    with torch.no_grad():
        info = fit_spatial(conv, fact, p.T @ p / len(p), iterations=3)
        x = _smooth(3, 1)
        assert torch.allclose(fact(x), conv(x), atol=1e-6)
    assert info["fit"] <= info["svd"] < 1e-20


def test_jaderberg_patches_are_the_convs_im2col():
    conv = _conv(bias=False, stride=2)
    x = _smooth(2, 0)
    p = patches(conv, x)
    with torch.no_grad():
        y = conv(x).permute(0, 2, 3, 1).reshape(-1, 6)   # pixels in the order unfold gives: (batch, H, W)
    assert torch.allclose(p @ conv.weight.reshape(6, -1).T, y, atol=1e-10)


def test_jaderberg_data_fit_lowers_the_response_error_of_the_spatial_svd():
    conv = _conv(bias=False)
    x = _smooth(16, 0)
    p = patches(conv, x)
    fact = L.factorize(conv, "spatial", 2)
    with torch.no_grad():
        svd_err = float(((fact(x) - conv(x)) ** 2).sum())
        info = fit_spatial(conv, fact, p.T @ p / len(p), iterations=5)
        fit_err = float(((fact(x) - conv(x)) ** 2).sum())
        total = float((conv(x) ** 2).sum())
    assert fit_err < 0.9 * svd_err
    # the reported relative errors are the layer's response errors on the calibration data
    assert info["svd"] == pytest.approx(svd_err / total, rel=1e-6)
    assert info["fit"] == pytest.approx(fit_err / total, rel=1e-6)


SHAPE = (1, 8, 8)


def _ctx(seen: list[int]) -> Context:
    def batches(n: int):
        seen.append(n)
        g = torch.Generator().manual_seed(0)
        return [(torch.randn((16, *SHAPE), generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(n)]

    return Context(input_shape=SHAPE, num_classes=10, steps_per_epoch=4, epochs=0, train_batches=batches)


@pytest.mark.parametrize("name", ["zhang", "jaderberg"])
@pytest.mark.parametrize("speedup", [1.5, 2.5])
def test_speedup_rule_lands_within_2_percent_and_reads_the_asked_calibration_batches(name, speedup):
    torch.manual_seed(0)
    model = build_model("cnn", 10, SHAPE).eval()
    seen: list[int] = []
    m = registry.build(name, {"rule": f"speedup:{speedup}", "calibration": 3})
    m.ctx = _ctx(seen)
    m.attach(model, m.ctx)
    small = m.compress(model).eval()
    x = torch.randn(2, *SHAPE)
    assert L.model_macs(model, x) / L.model_macs(small, x) == pytest.approx(speedup, rel=0.02)
    assert seen == [3]
    rep = m.report()
    fitted = [r["name"] for r in rep.layers if r["rank"] is not None]
    assert fitted and sorted(rep.info["fit"]) == sorted(fitted) and rep.info["calibration_batches"] == 3
    assert rep.scheme == ("channel" if name == "zhang" else "spatial")


@pytest.mark.parametrize("name, scheme", [("zhang", "channel"), ("jaderberg", "spatial")])
def test_mac_formula_equals_fvcore_on_the_fitted_layer(name, scheme):
    torch.manual_seed(0)
    model = build_model("cnn", 10, SHAPE).eval()
    m = registry.build(name, {"rule": "speedup:2.0"})
    m.ctx = _ctx([])
    m.attach(model, m.ctx)
    small = m.compress(model)
    probes, _ = L.probe_layers(model, torch.zeros(1, *SHAPE))
    for r in m.report().layers:
        if r["rank"] is None:
            continue
        layer, p = small.get_submodule(r["name"]), probes[r["name"]]
        x = torch.zeros(1, layer[0].in_channels, *p.in_hw)
        formula = L.factorized_macs(model.get_submodule(r["name"]), scheme, r["rank"], p.out_hw, p.in_hw)
        assert L.model_macs(layer, x) == formula == r["macs"]


def test_zhang_ranks_keep_the_energy_of_the_responses_not_of_the_weights():
    torch.manual_seed(0)
    model = build_model("cnn", 10, SHAPE).eval()
    ctx = _ctx([])
    zhang = registry.build("zhang", {"rule": "energy:0.9", "calibration": 2})
    zhang.ctx = ctx
    zhang.attach(model, ctx)
    zhang.compress(model)
    got = {r["name"]: r["rank"] for r in zhang.report().layers if r["rank"] is not None}
    outs: dict[str, list[torch.Tensor]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda mod, i, o, n=n: outs.setdefault(n, []).append(o))
             for n in got]
    with torch.no_grad():
        for x, _ in ctx.train_batches(2):
            model(x)
    for h in hooks:
        h.remove()
    weight_ranks = {}
    for n, o in outs.items():
        y = torch.cat([t.transpose(1, -1).reshape(-1, t.shape[1]) for t in o]).double()
        cov = torch.cov(y.T, correction=0)
        spectrum = torch.linalg.eigvalsh(cov).flip(-1).clamp_min(0).sqrt()
        assert got[n] == L.rank_from_rule(spectrum, "energy:0.9"), n
        weight_ranks[n] = L.rank_from_rule(torch.linalg.svdvals(L.to_matrix(model.get_submodule(n).weight.double(),
                                                                             "channel")), "energy:0.9")
    assert weight_ranks != got          # on this network the two criteria differ


def test_zhang_fit_beats_the_weight_svd_at_the_same_ranks_on_the_calibration_responses():
    torch.manual_seed(0)
    model = build_model("cnn", 10, SHAPE).eval()
    ctx = _ctx([])
    svd = registry.build("svd", {"scheme": "channel", "rule": "rank:3"})
    zhang = registry.build("zhang", {"rule": "rank:3", "calibration": 1})   # fitted on exactly x below
    outs = {}
    for m in (svd, zhang):
        m.ctx = ctx
        m.attach(model, ctx)
        outs[m.name] = m.compress(model).eval()
    x = ctx.train_batches(1)[0][0]
    inputs = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda mod, i, o, n=n: inputs.__setitem__(n, i[0]))
             for n in ("3", "6", "9")]
    with torch.no_grad():
        model(x)
        for h in hooks:
            h.remove()
        for n, inp in inputs.items():
            ref = model.get_submodule(n)(inp)
            err = {k: float(((small.get_submodule(n)(inp) - ref) ** 2).sum()) for k, small in outs.items()}
            assert err["zhang"] <= err["svd"] * 1.0001, (n, err)


def test_parameters_are_validated_with_the_one_line_error():
    with pytest.raises(ValueError, match=r"^calibration: 0; accepted: an int >= 1"):
        registry.build("zhang", {"calibration": 0})
    with pytest.raises(ValueError, match=r"^iterations: -1; accepted: an int >= 0"):
        registry.build("jaderberg", {"iterations": -1})
    with pytest.raises(ValueError, match=r"^rule: 'fast'; accepted: \"energy:E\""):
        registry.build("jaderberg", {"rule": "fast"})
    assert registry.get_method("zhang").starts_from_baseline and registry.get_method("jaderberg").starts_from_baseline


def test_jaderberg_fit_is_the_same_from_the_moment_or_from_its_thin_factor():
    conv = _conv(bias=False)
    p = patches(conv, _smooth(1, 0)[:, :, :4, :4])     # 16 pixels < D = 36: the method keeps the factor
    assert p.shape[0] < p.shape[1]
    a, b = L.factorize(conv, "spatial", 3), L.factorize(conv, "spatial", 3)
    with torch.no_grad():
        ia = fit_spatial(conv, a, p.T @ p / len(p), iterations=3)
        ib = fit_spatial(conv, b, p.T / len(p) ** 0.5, iterations=3)
    # S is singular here (16 pixels): the least-squares solutions are not unique, their error is
    assert ia["svd"] == pytest.approx(ib["svd"], rel=1e-9)
    assert ia["fit"] == pytest.approx(ib["fit"], rel=1e-2) and ib["fit"] < 0.5 * ib["svd"]
