"""tucker2 (Kim et al., ICLR 2016): exact at full rank, the layer computes the decomposed kernel,
its MAC formula is fvcore's count, VBMF finds the Tucker ranks, speedup:S lands within 2%."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rankbench.bench.measure.metrics import count_macs
from rankbench.bench.models.builtin import build_model
from rankbench.methods.api import registry
from rankbench.methods import tucker2
from rankbench.methods.api.base import Context, start

CONVS = [  # (conv, input H, W): bias, stride, padding, dilation, padding modes, non-square kernels
    (lambda: nn.Conv2d(6, 8, 3, padding=1), (9, 9)),
    (lambda: nn.Conv2d(5, 7, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), (11, 10)),
    (lambda: nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect", bias=False), (8, 7)),
    (lambda: nn.Conv2d(6, 4, 3, padding="valid", stride=2), (9, 9)),
    (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, padding_mode="circular"), (8, 8)),
    (lambda: nn.Conv2d(8, 8, 1), (5, 5)),
]


def _conv64(make, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return make().double().eval()


@pytest.mark.parametrize("i", range(len(CONVS)))
def test_full_rank_tucker2_reproduces_the_dense_layer_in_float64(i):
    make, hw = CONVS[i]
    conv = _conv64(make)
    t, s = conv.weight.shape[:2]
    layer, facts = tucker2.fill(conv, (t, s))
    x = torch.randn(2, s, *hw, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(layer(x), conv(x), rtol=0, atol=1e-6)
    assert facts["rel_error"] < 1e-10
    assert [type(m) for m in layer] == [nn.Conv2d] * 3
    assert (layer[2].bias is not None) == (conv.bias is not None)  # the bias rides on the last 1x1 conv


@pytest.mark.parametrize("i", range(len(CONVS)))
def test_low_rank_layer_computes_the_tucker_reconstruction_and_its_macs_are_fvcores_count(i):
    import tensorly as tl

    make, hw = CONVS[i]
    conv = _conv64(make, seed=1)
    t, s = conv.weight.shape[:2]
    ranks = (max(1, t // 2), max(1, s - 2))
    layer, facts = tucker2.fill(conv, ranks)
    core, u_out, u_in = tucker2.decompose(conv.weight.detach().numpy(), ranks)
    kernel = torch.from_numpy(tl.tenalg.multi_mode_dot(core, [u_out, u_in], modes=[0, 1]))
    ref = nn.Conv2d(s, t, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    padding_mode=conv.padding_mode, bias=conv.bias is not None).double()
    with torch.no_grad():
        ref.weight.copy_(kernel)
        if conv.bias is not None:
            ref.bias.copy_(conv.bias)
        x = torch.randn(2, s, *hw, dtype=torch.float64)
        y = conv(x)
        assert torch.allclose(layer(x), ref(x), rtol=0, atol=1e-9)
    assert facts["rel_error"] == pytest.approx(float((kernel - conv.weight.detach()).norm() / conv.weight.detach().norm()), rel=1e-9)
    # the formula the speedup search uses is what fvcore counts on the factorized layer
    formula = tucker2.macs(conv, ranks, hw, y.shape[-2:])
    assert formula == count_macs(layer.float(), (s, *hw))


def test_vbmf_rule_finds_the_ranks_of_a_tucker_kernel():
    rng = np.random.default_rng(0)
    t, s, r_out, r_in = 32, 24, 5, 3
    core = rng.standard_normal((r_out, r_in, 3, 3)) * 3.0
    u_out, _ = np.linalg.qr(rng.standard_normal((t, r_out)))
    u_in, _ = np.linalg.qr(rng.standard_normal((s, r_in)))
    k = np.einsum("abij,ta,sb->tsij", core, u_out, u_in) + 0.01 * rng.standard_normal((t, s, 3, 3))
    conv = nn.Conv2d(s, t, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(k))
    assert tucker2.layer_ranks(conv, "vbmf") == (r_out, r_in)
    assert tucker2.layer_ranks(conv, "rank:4") == (4, 4)
    assert tucker2.layer_ranks(conv, "ratio:0.5") == (16, 12)


def _ctx(shape=(3, 32, 32)) -> Context:
    return Context(input_shape=shape, num_classes=10, steps_per_epoch=1, epochs=1)


@pytest.mark.parametrize("speedup", [2.0, 3.0])
def test_speedup_rule_lands_within_2_percent_on_resnet20(speedup):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32)).eval()
    m = registry.build("tucker2", {"rule": f"speedup:{speedup}"})
    start(m, model, _ctx())
    small = m.compress(model).eval()
    got = count_macs(model, (3, 32, 32)) / count_macs(small, (3, 32, 32))
    assert got == pytest.approx(speedup, rel=0.02)
    layers = {r["name"]: r for r in m.report().layers}
    done = [r for r in layers.values() if r["rank"] is not None]
    assert done and all(r["scheme"] == "tucker2" and len(r["rank"]) == 2 for r in done)
    assert isinstance(small.get_submodule(done[0]["name"]), tucker2.Tucker2Conv)
    assert layers["conv1"]["skipped"].startswith("first conv")


def test_parameters_defaults_and_reachability():
    cls = registry.get_method("tucker2")
    assert cls.starts_from_baseline
    m = registry.build("tucker2", {})
    assert m.rule == "vbmf" and m.finetune_epochs == 0
    assert registry.build("tucker2", {"finetune_epochs": 3}).finetune_epochs == 3
    with pytest.raises(ValueError, match=r'^rule: \'energy\'; accepted: "vbmf", "energy:E"'):
        registry.build("tucker2", {"rule": "energy"})
    with pytest.raises(ValueError, match=r"^finetune_epochs: -1; accepted: an int >= 0$"):
        registry.build("tucker2", {"finetune_epochs": -1})
    model = build_model("cnn", 10, (1, 8, 8)).eval()
    with pytest.raises(ValueError, match=r"^rule: 'speedup:500.0': not reachable with these layers; accepted: speedup up to"):
        start(registry.build("tucker2", {"rule": "speedup:500"}), model, _ctx((1, 8, 8)))


def test_an_unreachable_speedup_is_refused_when_the_spec_is_read():
    from rankbench.bench.checks import UserError
    from rankbench.bench.spec.parse import parse_spec

    spec = ("sweep: t\nseeds: [0]\ndata: {name: digits}\nmodel: cnn\ntrain: {epochs: 1}\n"
            "methods:\n  - {name: tucker2, rule: 'speedup:1000'}\n")
    with pytest.raises(UserError, match="speedup"):
        parse_spec(spec)
