"""methods.lowrank: schemes, factorized layers, rank rules, MAC counts, batched projection,
whole-model decomposition. Reference matrix views and formulas are written out here from
shared/reference/methods.md, independently of the code under test."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from bench.models import build_model
from methods import lowrank as L



# --- independent references (straight from the table in reference/methods.md) ---------------

def ref_matrix(w: torch.Tensor, scheme: str) -> torch.Tensor:
    if scheme == "linear":
        return w
    n, c, kh, kw = w.shape
    if scheme == "channel":
        return w.reshape(n, c * kh * kw)
    if scheme == "spatial":
        return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return w.reshape(n, c, kh * kw)


def ref_reconstruct(w: torch.Tensor, scheme: str, r: int) -> torch.Tensor:
    """Rank-r truncated SVD of the scheme's matrix, mapped back to the kernel shape by hand."""
    m = ref_matrix(w, scheme)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    approx = u[..., :r] @ torch.diag_embed(s[..., :r]) @ vh[..., :r, :]
    if scheme == "spatial":
        n, c, kh, kw = w.shape
        return approx.reshape(c, kh, n, kw).permute(2, 0, 1, 3)
    return approx.reshape(w.shape)


def ref_energy_rank(s: torch.Tensor, e: float) -> int:
    total = float((s ** 2).sum())
    acc = 0.0
    for k, v in enumerate(s.tolist(), start=1):
        acc += v * v
        if acc / total >= e:
            return k
    return len(s)


CONV_CASES = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=0, bias=False),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=(5, 3), stride=1, padding="same", dilation=(2, 1)),
    dict(kernel_size=(2, 4), stride=1, padding="same"),        # even kernels: asymmetric "same" padding
    dict(kernel_size=3, stride=1, padding="valid", dilation=2, bias=False),
    dict(kernel_size=3, stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    dict(kernel_size=3, stride=1, padding=1, padding_mode="reflect"),
]


def _conv(case: dict, cin: int = 5, cout: int = 7) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, **case).double()


@pytest.mark.parametrize("scheme", L.CONV_SCHEMES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_full_rank_factorization_reproduces_conv(scheme, case):
    conv = _conv(case)
    x = torch.randn(2, 5, 13, 11, dtype=torch.float64)
    fact = L.factorize(conv, scheme, L.full_rank(conv, scheme))
    y, yf = conv(x), fact(x)
    assert yf.shape == y.shape
    assert (yf - y).abs().max() < 1e-5


@pytest.mark.parametrize("scheme", L.CONV_SCHEMES)
@pytest.mark.parametrize("case", CONV_CASES[:5], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_rank_r_factorization_equals_dense_with_reconstructed_weight(scheme, case):
    conv = _conv(case)
    r = 2
    ref = _conv(case)
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


def ref_tiled_reconstruct(w: torch.Tensor, tiles: int, r: int) -> torch.Tensor:
    """DeepTwist tiling by hand: input-channel groups, each lowered and truncated on its own."""
    parts = []
    for g in torch.chunk(w, tiles, dim=1):
        m = g.reshape(g.shape[0], -1)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        parts.append((u[:, :r] @ torch.diag(s[:r]) @ vh[:r]).reshape(g.shape))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("case", CONV_CASES[:5], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_tiled_channel_factorization_full_rank_and_rank_r(case):
    conv = _conv(case, cin=6, cout=7)
    x = torch.randn(2, 6, 12, 12, dtype=torch.float64)
    full = L.full_rank(conv, "channel", 3)
    assert full == min(7, 2 * conv.weight[0, 0].numel())
    assert (L.factorize(conv, "channel", full, tiles=3)(x) - conv(x)).abs().max() < 1e-5
    ref = _conv(case, cin=6, cout=7)
    with torch.no_grad():
        ref.weight.copy_(ref_tiled_reconstruct(conv.weight, 3, 2))
    fact = L.factorize(conv, "channel", 2, tiles=3)
    assert fact[0].groups == 3 and fact[0].out_channels == 6 and fact.tiles == 3
    assert (fact(x) - ref(x)).abs().max() < 1e-8
    assert torch.allclose(L.reconstruct(conv.weight.detach(), "channel", 2, tiles=3), ref.weight, atol=1e-10)


def test_tiles_errors_name_the_field():
    with pytest.raises(ValueError, match="tiles: 4 does not divide the layer's 6 input channels"):
        L.to_matrix(torch.randn(7, 6, 3, 3), "channel", 4)
    with pytest.raises(ValueError, match="tiles: got 2 with scheme 'spatial'; accepted: tiles > 1 only with 'channel'"):
        L.check_tiles("spatial", 2)
    with pytest.raises(ValueError, match="tiles: got 0; accepted: an int >= 1"):
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
    with pytest.raises(ValueError, match=r"scheme: got 'tucker'; accepted: channel, spatial, linear, decoupling"):
        L.scheme_for(nn.Linear(4, 4), "tucker")
    with pytest.raises(ValueError, match=r"rank: got 0; accepted: an int in \[1, 4\]"):
        L.factorize(nn.Conv2d(4, 4, 3), "channel", 0)
    with pytest.raises(ValueError, match="grouped"):
        L.factorize(nn.Conv2d(4, 4, 3, groups=4), "channel", 1)


# --- rank rules --------------------------------------------------------------------------------

S = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22: cumulative .727 .909 .955 1


@pytest.mark.parametrize("rule,s,expected", [
    ("energy:0.9", torch.tensor([3.0, 1.0]), 1),          # 9/10 = 0.9 exactly: reached at k=1
    ("energy:0.91", torch.tensor([3.0, 1.0]), 2),
    ("energy:0.7", S, 1), ("energy:0.9", S, 2), ("energy:0.95", S, 3), ("energy:0.96", S, 4), ("energy:1", S, 4),
    ("value:0.05", torch.tensor([1.0, 0.5, 0.05, 0.01]), 3),  # keep s_i >= t
    ("value:2", torch.tensor([1.0, 0.5]), 1),                 # never rank 0
    ("ratio:0.5", torch.ones(5), 3), ("ratio:0.01", torch.ones(5), 1), ("ratio:1", torch.ones(5), 5),
    ("rank:2", torch.ones(5), 2), ("rank:8", torch.ones(5), 5),
    # entropy: s = 6,3,1 -> p = .6,.3,.1 -> -p log p = .3065 .3612 .2303, cumulative share .341 .744 1
    ("entropy:0.3", torch.tensor([6.0, 3.0, 1.0]), 1), ("entropy:0.5", torch.tensor([6.0, 3.0, 1.0]), 2),
    ("entropy:0.75", torch.tensor([6.0, 3.0, 1.0]), 3),
    ("entropy:0.5", torch.ones(4), 2), ("entropy:0.51", torch.ones(4), 3),  # uniform: equal shares
    ("energy:0.9", torch.zeros(3), 1),                       # all-zero layer: rank 1, no NaN
])
def test_rank_rules_on_hand_made_spectra(rule, s, expected):
    assert L.rank_from_rule(s, rule) == expected
    assert L.rank_from_rule(s.double(), rule) == expected


def test_rank_mask_is_batched_prefix_and_rowwise():
    spectra = torch.stack([S, torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([5.0, 0.1, 0.0, 0.0])])
    for rule in ("energy:0.9", "value:0.5", "ratio:0.5", "rank:3", "entropy:0.8"):
        mask = L.rank_mask(spectra, rule)
        assert mask.shape == spectra.shape and mask.dtype == torch.bool
        for row, s in zip(mask, spectra):
            k = L.rank_from_rule(s, rule)
            assert row.tolist() == [i < k for i in range(4)]


@pytest.mark.parametrize("text,needle", [
    ("energy", "rule: got 'energy'"), ("tucker:1", "unknown kind 'tucker'"), ("energy:abc", "not a number"),
    ("energy:1.5", "out of range"), ("rank:2.5", "out of range"), ("rank:inf", "out of range"),
    ("speedup:0.5", "out of range"), ("value:-1", "out of range"), (0.9, "rule: got 0.9"),
])
def test_parse_rule_errors_name_field_value_and_accepted(text, needle):
    with pytest.raises(ValueError, match="accepted") as e:
        L.parse_rule(text)
    assert needle in str(e.value)
    with pytest.raises(ValueError, match="^export: "):
        L.parse_rule(text, "export")


def test_parse_rule_round_trip_and_speedup_is_model_level():
    assert L.parse_rule("energy:0.9") == L.Rule("energy", 0.9)
    assert str(L.parse_rule("rank:8")) == "rank:8"
    assert L.parse_rule(" Speedup:2").is_global
    with pytest.raises(ValueError, match="whole-model rule"):
        L.rank_mask(S, "speedup:2.0")


# --- MACs ----------------------------------------------------------------------------------------

def formula_macs(conv: nn.Conv2d, scheme: str, r: int, in_hw, out_hw) -> int:
    """reference/methods.md, per output pixel, times the resolution each term runs at."""
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
    conv = _conv(case, 6, 8).float()
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


# --- batched projection --------------------------------------------------------------------------

def _layer_weights() -> list[torch.Tensor]:
    torch.manual_seed(3)
    shapes = [(8, 4, 3, 3), (8, 4, 3, 3), (16, 8, 3, 3), (8, 4, 3, 3), (6, 5, 1, 3)]
    # decaying spectra so the energy rule picks different ranks per layer
    ws = []
    for i, sh in enumerate(shapes):
        w = torch.randn(sh, dtype=torch.float64)
        ws.append(w * (1 + i) if i % 2 else w)
    return ws


# the Gram solver squares the matrix before its (float64) eigensolve: 1e-9 instead of 1e-10
SOLVER_ATOL = {"svd": 1e-10, "gram": 1e-9, "auto": 1e-9, "warm": 1e-9}


@pytest.mark.parametrize("solver", L.SOLVERS)
@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupling"])
def test_project_matches_per_layer_svd_reference(scheme, solver):
    weights = _layer_weights()
    if scheme != "channel":
        weights = [w for w in weights if w.shape[-1] * w.shape[-2] > 1]
    rule = "energy:0.6"
    atol = SOLVER_ATOL[solver]
    projected, subgrads = L.project(weights, scheme, rule, with_subgradient=True, solver=solver)
    for w, p, g in zip(weights, projected, subgrads):
        m = ref_matrix(w, scheme)
        ms = m if m.dim() == 3 else m.unsqueeze(0)
        ref_p, ref_g = [], []
        for one in ms:  # per filter for decoupling, else one matrix
            u, s, vh = torch.linalg.svd(one, full_matrices=False)
            r = ref_energy_rank(s, 0.6)
            ref_p.append(u[:, :r] @ torch.diag(s[:r]) @ vh[:r])
            ref_g.append(u[:, :r] @ vh[:r])
        rp, rg = torch.stack(ref_p).reshape(m.shape), torch.stack(ref_g).reshape(m.shape)
        assert p.shape == w.shape and g.shape == w.shape
        assert torch.allclose(ref_matrix(p, scheme), rp, atol=atol)
        assert torch.allclose(ref_matrix(g, scheme), rg, atol=atol)


@pytest.mark.parametrize("solver", L.SOLVERS)
def test_project_tiles_match_per_tile_reference(solver):
    weights = [w for w in _layer_weights() if w.shape[1] % 2 == 0]
    projected, subgrads = L.project(weights, "channel", "rank:2", tiles=2, solver=solver)
    for w, p in zip(weights, projected):
        assert torch.allclose(p, ref_tiled_reconstruct(w, 2, 2), atol=SOLVER_ATOL[solver])
    # per-weight tile counts; the untiled weight is projected whole
    mixed, _ = L.project(weights[:2], "channel", "rank:2", False, tiles=[2, 1])
    assert torch.allclose(mixed[0], ref_tiled_reconstruct(weights[0], 2, 2), atol=1e-10)
    assert torch.allclose(mixed[1], ref_reconstruct(weights[1], "channel", 2), atol=1e-10)


@pytest.mark.parametrize("solver,routine", [("svd", "svd"), ("gram", "eigh"), ("warm", "eigh")])
def test_project_one_svd_per_shape_group_and_no_host_sync(monkeypatch, solver, routine):
    weights = _layer_weights()  # 3 distinct matrix shapes among 5 layers
    calls = []
    real = getattr(torch.linalg, routine)

    def counting(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    def no_sync(*a, **k):
        raise AssertionError("host sync in project()")

    monkeypatch.setattr(torch.linalg, routine, counting)
    for attr in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, attr, no_sync)
    projected, subgrads = L.project(weights, "channel", "energy:0.9", with_subgradient=True, solver=solver)
    monkeypatch.undo()
    assert len(calls) == 3
    assert sorted(c[0] for c in calls) == [1, 1, 3]  # the three (8, 36) layers share one batched call
    assert all(p is not None and g is not None for p, g in zip(projected, subgrads))
    _, none = L.project(weights, "channel", "rank:1", with_subgradient=False)
    assert none == [None] * len(weights)


@pytest.mark.parametrize("solver", ["gram", "auto", "warm"])
def test_fast_solvers_on_float32_weights_keep_exact_ranks_and_float32_accuracy(solver):
    # ResNet-20's TRP layers as float32, tall (spatial) and wide (channel) matrices alike
    from bench.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32))
    for scheme in ("channel", "spatial"):
        names = [n for n, why in L.layer_choice(model, scheme) if why is None]
        weights = [model.get_submodule(n).weight.detach() for n in names]
        ref_p, ref_g = L.project([w.double() for w in weights], scheme, "energy:0.9", solver="svd")
        got_p, got_g = L.project(weights, scheme, "energy:0.9", solver=solver)
        for w, rp, rg, p, g in zip(weights, ref_p, ref_g, got_p, got_g):
            assert p.dtype == w.dtype == g.dtype
            assert float((p.double() - rp).norm() / rp.norm()) < 1e-5
            assert float((g.double() - rg).norm() / rg.norm()) < 1e-5
            # same rank: the sub-gradient U_r V_r^T has r singular values equal to one
            assert torch.linalg.matrix_rank(L.to_matrix(g.double(), scheme), atol=0.5) == \
                torch.linalg.matrix_rank(L.to_matrix(rg, scheme), atol=0.5)


def _trp_steady(dtype: torch.dtype, seed: int = 0, scheme: str = "channel") -> list[torch.Tensor]:
    """Weights as period-1 TRP leaves them: in the scheme's matrix form, a few large singular
    values over a small tail."""
    g = torch.Generator().manual_seed(seed)
    ws = []
    for out, inp, rank in [(16, 16, 3), (16, 16, 4), (32, 16, 5), (64, 32, 6), (64, 32, 4)]:
        rows, cols = L.to_matrix(torch.empty(out, inp, 3, 3), scheme).shape
        u, v = torch.randn(rows, rank, generator=g), torch.randn(rank, cols, generator=g)
        m = (u * torch.linspace(3, 1, rank)) @ v + 1e-3 * torch.randn(rows, cols, generator=g)
        ws.append(L.from_matrix(m, scheme, (out, inp, 3, 3)).to(dtype))
    return ws


def _nudge(ws: list[torch.Tensor], size: float, seed: int) -> list[torch.Tensor]:
    """A training step's worth of change: ``size`` times each weight's RMS, per element."""
    g = torch.Generator().manual_seed(seed)
    return [w + size * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g, dtype=w.dtype) for w in ws]


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_warm_solver_starts_from_the_last_step_and_stays_exact(scheme):
    state = L.WarmStart()
    weights = _trp_steady(torch.float64, scheme=scheme)
    L.project(weights, scheme, "energy:0.9", solver="warm", state=state)
    assert state.cold == 3 and state.warm == 0               # 3 shape groups, nothing to start from
    for step in range(3):
        weights = _nudge(weights, 1e-3, step)
        p, g = L.project(weights, scheme, "energy:0.9", solver="warm", state=state)
        rp, rg = L.project(weights, scheme, "energy:0.9", solver="svd")
        # a stale subspace would be off by about the step (1e-3); the check bounds the angle by 1e-7
        for a, b in zip(p + g, rp + rg):
            assert float((a - b).norm() / b.norm()) < 1e-9
    assert state.warm == 9 and state.cold == 3


def test_warm_check_rejects_a_start_that_misses_the_top_subspace():
    # a start spanning only the bottom eigenvectors of a diagonal Gram matrix stays there under
    # subspace iteration (exactly: zeros stay zero), so its Ritz values look like a clean small
    # spectrum; the energy left outside the block (trace - Ritz values) is what must expose it
    lam = torch.linspace(10, 1, 16, dtype=torch.float64)
    x = torch.diag(lam.sqrt()).unsqueeze(0)                  # X X^T = diag(lam)
    bottom = torch.eye(16, dtype=torch.float64)[:, -6:].unsqueeze(0)
    assert L.warm_eigs(x, bottom, L.Rule("energy", 0.9)) is None
    top = torch.eye(16, dtype=torch.float64)[:, :6].unsqueeze(0)
    gapped = torch.diag(torch.cat([lam[:3] * 100, lam[3:] * 1e-6]).sqrt()).unsqueeze(0)
    assert L.warm_eigs(gapped, top, L.Rule("energy", 0.9)) is not None


def test_warm_solver_falls_back_when_the_weights_jump_and_the_rank_outgrows_the_block():
    state = L.WarmStart()
    L.project(_trp_steady(torch.float64), "channel", "energy:0.9", solver="warm", state=state)
    assert len(state.starts) == 3                             # a start kept for each group
    jumped = [w + 10 * torch.randn_like(w) for w in _trp_steady(torch.float64)]  # noise-dominated spectrum
    p, g = L.project(jumped, "channel", "energy:0.9", solver="warm", state=state)
    rp, rg = L.project(jumped, "channel", "energy:0.9", solver="svd")
    assert state.warm == 0 and state.cold == 6
    assert not state.starts                  # ranks above half of m: no warm start kept
    for a, b in zip(p + g, rp + rg):
        assert float((a - b).norm() / b.norm()) < 1e-9


def test_warm_solver_keeps_float32_ranks_on_trp_steady_weights():
    state = L.WarmStart()
    weights = _trp_steady(torch.float32)
    L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
    weights = _nudge(weights, 1e-3, 0)
    p, g = L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
    rp, rg = L.project([w.double() for w in weights], "channel", "energy:0.9", solver="svd")
    assert state.warm == 3
    for a, b in zip(p + g, rp + rg):
        assert a.dtype == torch.float32 and float((a.double() - b).norm() / b.norm()) < 1e-5
    for a, b in zip(g, rg):
        assert torch.linalg.matrix_rank(L.to_matrix(a.double(), "channel"), atol=0.5) == \
            torch.linalg.matrix_rank(L.to_matrix(b, "channel"), atol=0.5)


def test_gram_solver_on_a_rank_deficient_matrix_gives_a_finite_subgradient():
    torch.manual_seed(0)
    w = (torch.randn(8, 2, dtype=torch.float64) @ torch.randn(2, 36, dtype=torch.float64)).reshape(8, 4, 3, 3)
    (p,), (g,) = L.project([w], "channel", "ratio:1.0", solver="gram")
    (rp,), (rg,) = L.project([w], "channel", "rank:2", solver="svd")
    assert torch.allclose(p, w, atol=1e-9)
    # only the two real directions count; the zero singular values contribute nothing, not 1/eps
    assert torch.isfinite(g).all() and torch.allclose(g, rg, atol=1e-6)


def test_unknown_solver_is_one_line_naming_what_is_accepted():
    with pytest.raises(ValueError, match=r"solver: got 'qr'; accepted: svd, gram"):
        L.project(_layer_weights(), "channel", "rank:1", solver="qr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA sync check needs a GPU; CPU test above checks by construction")
@pytest.mark.parametrize("solver", L.SOLVERS)
def test_project_does_not_sync_on_cuda(solver):
    weights = [w.float().cuda() for w in _layer_weights()]
    n_groups = 3
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            L.project(weights, "channel", "energy:0.9", with_subgradient=True, solver=solver)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # torch.linalg.svd / eigh sync once per call (documented by PyTorch; set_sync_debug_mode("error")
    # would raise inside them), so the check is: at most one sync per shape group, none from our own code
    assert len(syncs) <= n_groups


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA sync check needs a GPU")
def test_warm_solver_reads_back_a_few_flags_per_group_on_cuda():
    state = L.WarmStart()
    L.project([w.float().cuda() for w in _trp_steady(torch.float64)], "channel", "energy:0.9", solver="warm",
              state=state)
    weights = [w.float().cuda() for w in _nudge(_trp_steady(torch.float64), 1e-3, 0)]
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert state.warm == 3
    # per group: the k x k eigh's own check, one read-back (accepted? largest rank), and at most
    # one per thin QR if cuSOLVER's is checked; never one per layer or per matrix
    assert len(syncs) <= 3 * (2 + L.WARM_ITERS)


# --- layer choice and whole-model decomposition -------------------------------------------------

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
    with pytest.raises(ValueError, match=r"layers: \['nope'\] are not Conv2d/Linear layers.*accepted: 0, 3, 6, 9, 14$"):
        L.decompose_model(model, "channel", "rank:2", layers=["nope"])
    with pytest.raises(ValueError, match="layers: got 'some'; accepted: official, all"):
        L.decompose_model(model, "channel", "rank:2", layers="some")
    with pytest.raises(ValueError, match="example_input: required for rule speedup:2.0"):
        L.decompose_model(model, "channel", "speedup:2")
    x = torch.zeros(1, 1, 8, 8)
    best = L.max_speedup(model, "channel", x)
    with pytest.raises(ValueError, match=rf"rule: speedup:1000.0 is not reachable.*accepted: speedup up to {best:.3f}"):
        L.decompose_model(model, "channel", "speedup:1000", example_input=x)
    with pytest.raises(ValueError, match=rf"^export: speedup:1000.0 is not reachable.*up to {best:.3f}"):
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
