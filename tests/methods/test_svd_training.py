"""``svd-training``: the factorized layer computes the layer it replaces (float64), the
regularizers are the paper's formulas, ``s`` gets no weight decay, and compress prunes by the
rule on the trained spectrum (``speedup:S`` within 2%)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rankbench.bench.models.builtin import build_model
from rankbench.methods import lowrank as L
from rankbench.methods.api import registry
from rankbench.methods.api.base import Context
from rankbench.methods.svd_training import SVDLayer

SHAPE = (1, 8, 8)


@pytest.mark.parametrize("layer, scheme", [
    (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True), "channel"),
    (lambda: nn.Conv2d(4, 6, (3, 5), padding="same", dilation=2, bias=False), "channel"),
    (lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), "spatial"),
    (lambda: nn.Conv2d(4, 6, 3, stride=(2, 1), padding=(1, 0)), "spatial"),
    (lambda: nn.Linear(12, 5), "linear"),
])
def test_svd_layer_computes_the_layer_it_replaces_in_float64(layer, scheme):
    torch.manual_seed(0)
    dense = layer().double()
    svd = SVDLayer(dense, scheme)
    x = torch.randn(2, 12, dtype=torch.float64) if scheme == "linear" else torch.randn(2, 4, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(svd(x), dense(x), atol=1e-6)
        assert torch.allclose(svd.dense()(x), dense(x), atol=1e-6)
    k = min(L.to_matrix(dense.weight, scheme).shape)
    assert svd.u.shape[1] == svd.s.shape[0] == svd.v.shape[0] == k


def _attached(params: dict) -> tuple:
    torch.manual_seed(0)
    model = build_model("cnn", 10, SHAPE)
    m = registry.build("svd-training", params)
    m.ctx = Context(input_shape=SHAPE, num_classes=10, steps_per_epoch=4, epochs=1)
    m.attach(model, m.ctx)
    return m, model


@pytest.mark.parametrize("sparsity", ["l1", "hoyer"])
def test_extra_loss_is_orthogonality_plus_sparsity_and_reaches_u_s_v(sparsity):
    m, model = _attached({"orthogonality": 0.5, "sparsity": sparsity, "sparsity_weight": 0.1})
    layers = [model.get_submodule(n) for n in m.names]
    assert m.names == ["3", "6", "9"] and all(isinstance(x, SVDLayer) for x in layers)
    with torch.no_grad():   # move off the orthonormal start so the orthogonality term is not 0
        for x in layers:
            x.u.mul_(1.1)
    expected = 0.0
    for x in layers:
        k = x.s.shape[0]
        eye = torch.eye(k)
        ortho = (torch.linalg.matrix_norm(x.u.T @ x.u - eye) ** 2 + torch.linalg.matrix_norm(x.v @ x.v.T - eye) ** 2)
        sp = x.s.abs().sum() if sparsity == "l1" else x.s.abs().sum() / x.s.norm()
        expected = expected + 0.5 * ortho / k ** 2 + 0.1 * sp
    loss = m.extra_loss(model, 0)
    assert torch.allclose(loss, expected, rtol=1e-5)
    loss.backward()
    assert all(x.u.grad is not None and x.s.grad is not None and x.v.grad is not None for x in layers)
    none, _ = _attached({"orthogonality": 0.0, "sparsity_weight": 0.0})
    assert none.extra_loss(model, 0) is None


def test_singular_values_get_no_weight_decay_and_every_parameter_is_trained_once():
    m, model = _attached({})
    groups = m.param_groups(model)
    s_ids = {id(model.get_submodule(n).s) for n in m.names}
    no_decay = [g for g in groups if g.get("weight_decay") == 0.0]
    assert len(no_decay) == 1 and {id(p) for p in no_decay[0]["params"]} == s_ids
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())
    opt = torch.optim.SGD(groups, lr=0.1, weight_decay=1e-4)   # what rankbench.bench.train.loop builds from them
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_compress_prunes_by_the_energy_of_s_when_u_and_v_are_orthonormal():
    m, model = _attached({"rule": "energy:0.9"})
    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])
    with torch.no_grad():
        for n in m.names:
            layer = model.get_submodule(n)
            k = layer.s.shape[0]
            layer.s.copy_(torch.cat([s, torch.zeros(k - len(s))]))   # U, V: still the SVD's orthonormal factors
    model.eval()
    small = m.compress(model).eval()
    want = L.rank_from_rule(s, "energy:0.9")
    assert want == 2
    assert {r["name"]: r["rank"] for r in m.report().layers if r["rank"] is not None} == {n: want for n in m.names}
    with torch.no_grad():   # the pruned model is the trained one with s cut to the kept values
        for n in m.names:
            model.get_submodule(n).s[want:] = 0
        x = torch.randn(3, *SHAPE)
        assert torch.allclose(small(x), model(x), atol=1e-5)


def test_speedup_rule_lands_within_2_percent_of_the_dense_architecture():
    m, model = _attached({"rule": "speedup:2.5"})
    small = m.compress(model.eval())
    x = torch.zeros(1, *SHAPE)
    dense = build_model("cnn", 10, SHAPE)
    assert L.model_macs(dense, x) / L.model_macs(small, x) == pytest.approx(2.5, rel=0.02)
    assert all(isinstance(small.get_submodule(r["name"]), L.Factorized) for r in m.report().layers if r["rank"])


def test_parameters_are_validated_with_the_one_line_error():
    with pytest.raises(ValueError, match=r"^sparsity: 'l2'; accepted: l1, hoyer$"):
        registry.build("svd-training", {"sparsity": "l2"})
    with pytest.raises(ValueError, match=r"^scheme: 'decoupling'; accepted: channel, spatial, linear$"):
        registry.build("svd-training", {"scheme": "decoupling"})
    with pytest.raises(ValueError, match=r"^orthogonality: -1; accepted: a number >= 0"):
        registry.build("svd-training", {"orthogonality": -1})
    assert not registry.get_method("svd-training").starts_from_baseline
