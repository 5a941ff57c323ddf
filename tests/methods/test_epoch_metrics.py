"""``Method.epoch_metrics``: what a method sends the trackers after each epoch (TRP: the rank
its energy rule keeps)."""
from __future__ import annotations

import math

import pytest
import torch

from rankbench.bench.models.builtin import build_model
from rankbench.methods import lowrank as L
from rankbench.methods.api import registry
from rankbench.methods.api.base import Context, Method
from rankbench.methods.trp import TRP

SHAPE = (1, 8, 8)


def _attached(method: Method) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("cnn", 10, SHAPE)
    method.ctx = Context(input_shape=SHAPE, num_classes=10, steps_per_epoch=1, epochs=1,
                         train_batches=lambda n: [(torch.randn(4, *SHAPE), torch.randint(0, 10, (4,)))] * n)
    method.attach(model, method.ctx)
    return model


def test_every_builtin_method_reports_finite_numbers_or_nothing():
    for name in ("dense", "svd", "arsvd", "trp", "deeptwist", "tucker2", "cp"):
        method = registry.build(name, {})
        model = _attached(method)
        out = method.epoch_metrics(model)
        assert isinstance(out, dict), name
        assert all(isinstance(k, str) and isinstance(v, float) and math.isfinite(v) for k, v in out.items()), name
    assert Method().epoch_metrics(torch.nn.Linear(2, 2)) == {}


def test_trp_mean_kept_rank_is_the_energy_rank_of_its_layers():
    trp = TRP(scheme="channel", energy=0.9)
    model = _attached(trp)
    assert trp.names
    # every chosen layer rank 1: the rule keeps exactly 1 of each
    with torch.no_grad():
        for n in trp.names:
            w = model.get_submodule(n).weight
            u, v = torch.randn(w.shape[0], 1), torch.randn(1, w[0].numel())
            w.copy_((u @ v).reshape(w.shape))
    out = trp.epoch_metrics(model)
    full = [min(L.to_matrix(model.get_submodule(n).weight, "channel").shape) for n in trp.names]
    assert out["mean_kept_rank"] == 1.0
    assert out["mean_kept_rank_fraction"] == pytest.approx(sum(1 / f for f in full) / len(full))
    # random weights keep more, never more than full rank
    torch.manual_seed(1)
    model = _attached(trp)
    out = trp.epoch_metrics(model)
    assert 1.0 < out["mean_kept_rank"] <= max(full) and 0 < out["mean_kept_rank_fraction"] <= 1.0
