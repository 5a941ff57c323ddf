"""The paper specs build the official network and export by the official rule.

The official TRP code (github.com/yuhuixu1993/Trained-Rank-Pruning: ``models/cifar/resnet.py``,
``cifar-TRP.py``'s ``show_low_rank``, ``decompose.py``) is the reference: its ResNet-20 has 272,474
parameters and 40,812,544 conv MACs by its formula; its export factorizes the stride-1 convs
chosen for TRP (value rule 0.05 for channel/spatial, energy 0.85 for network decoupling, which
factorizes every chosen conv) and its formula counts stride-2 convs as dense.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rankbench.bench.measure.metrics import count_macs, count_params
from rankbench.bench.models.builtin import build_model
from rankbench.bench.running.run import claimed_conv_macs
from rankbench.bench.spec.parse import load_spec
from rankbench.methods import lowrank as L
from rankbench.methods.api.base import Context
from rankbench.methods.api.registry import build

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bench" / "configs"
SHAPE = (3, 32, 32)


def _spec_model(spec: str) -> nn.Module:
    """The network the paper spec's trials build (every trial of a spec builds the same one)."""
    sweep = load_spec(CONFIGS / spec, check=False)
    models = {(t.model, t.model_options) for t in sweep.trials}
    assert len(models) == 1, models
    t = sweep.trials[0]
    return build_model(t.model, 10, SHAPE, **t.model_cfg)


def official_conv_macs(model: nn.Module, factorized: dict[str, tuple[str, int]] | None = None) -> int:
    """``show_low_rank``'s count: every Conv2d's N*C*kh*kw MACs per output pixel (or its
    factorized cost for a layer in ``factorized``: name -> (scheme, rank)), at the resolution
    the official code tracks (divided by each conv's stride; a projection shortcut, which comes
    after its block's strided conv, at the current one). Stride-2 layers always count dense."""
    factorized = factorized or {}
    hw, total = 32, 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        n, c, kh, kw = m.weight.shape
        per_pixel = n * c * kh * kw
        if name in factorized and m.stride == (1, 1):
            scheme, r = factorized[name]
            per_pixel = {"channel": c * kh * kw * r + r * n, "spatial": c * r * kh + n * r * kw,
                         "decoupling": (n * c + n * kh * kw) * r}[scheme]
        if "shortcut" not in name:
            hw //= m.stride[0]
        total += per_pixel * hw * hw
    return total


@pytest.mark.parametrize("spec,params,conv_macs", [
    ("trp-cifar10-resnet20.yaml", 272_474, 40_812_544),     # the paper's 0.27M
    ("trp-cifar10-resnet32.yaml", 466_906, 69_124_096),     # the paper's 0.47M
    ("trp-cifar10-resnet56.yaml", 853_018, 125_485_056),    # basic blocks (see the spec)
])
def test_paper_spec_networks_have_the_official_params_and_conv_macs(spec, params, conv_macs):
    model = _spec_model(spec)
    assert count_params(model) == params
    assert official_conv_macs(model) == conv_macs
    assert count_macs(model, SHAPE, conv_only=True) == conv_macs     # fvcore on convs agrees
    assert count_macs(model, SHAPE) == conv_macs + 64 * 10           # the whole model adds the fc


def test_official_bottleneck_resnet56_cannot_reach_the_quoted_speedup():
    """Why the ResNet-56 spec builds basic blocks: on the official code's depth-56 network (9
    bottleneck blocks per stage) TRP's 3x3 convs at rank 1 give at most ~1.8x, not 2.31x."""
    model = build_model("resnet56", 10, SHAPE, variant="trp").eval()
    assert count_params(model) == 869_530
    dense = count_macs(model, SHAPE, conv_only=True)
    for scheme in ("channel", "spatial"):
        small, _ = L.decompose_model(model, scheme, "rank:1", example_input=torch.zeros(1, *SHAPE),
                                     include_stride2=False)
        assert dense / count_macs(small, SHAPE, conv_only=True) < 1.85


def _trp_entries(spec: str) -> dict[str, dict]:
    return {t.params_dict["scheme"]: t.params_dict for t in load_spec(CONFIGS / spec, check=False).trials
            if t.method == "trp"}


def _train_trp(params: dict, steps: int = 3) -> tuple[nn.Module, object]:
    """A few TRP steps on random data, through the Method hooks the harness calls."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10, SHAPE, variant="trp")
    method = build("trp", params)
    method.ctx = Context(input_shape=SHAPE, num_classes=10, steps_per_epoch=steps, epochs=1)
    method.attach(model, method.ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for step in range(steps):
        x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
        method.before_step(model, step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        method.after_backward(model, step)
        opt.step()
    return model.eval(), method


def _official_rank(w: torch.Tensor, scheme: str, rule: str) -> int:
    """``ValueThreshold(t)`` (singular values >= t, counted from the top) or, for network
    decoupling, the largest ``EnergyThreshold(e)`` rank over the filters, capped at min(C, kh*kw)."""
    kind, value = rule.split(":")
    w = w.detach().double()
    n, c, kh, kw = w.shape
    if scheme == "decoupling":
        ranks = []
        for i in range(n):
            s = torch.linalg.svdvals(w[i].reshape(c, kh * kw))
            energy = (s ** 2).cumsum(0) / (s ** 2).sum()
            ranks.append(int((energy < float(value)).sum()) + 1)
        return min(max(ranks), min(c, kh * kw))
    m = w.reshape(n, -1) if scheme == "channel" else w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    s = torch.linalg.svdvals(m)
    below = (s < float(value)).nonzero()
    return int(below[0]) if len(below) else len(s)


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupling"])
def test_trp_export_of_a_trained_resnet20_follows_the_official_rule(scheme):
    params = _trp_entries("trp-cifar10-resnet20.yaml")[scheme]
    assert params["stride2"] == "official" and params["period_basis"] == "epoch"
    model, method = _train_trp(params)
    small = method.compress(model)
    report = method.report()
    rule = report.rule
    assert rule == ("energy:0.85" if scheme == "decoupling" else "value:0.05")
    reps = {r["name"]: r for r in report.layers}
    strided = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)}
    assert strided == {"layer2.0.conv1", "layer2.0.shortcut.0", "layer3.0.conv1", "layer3.0.shortcut.0"}
    trained = set(method.names)                    # the official look-up table: 3x3 convs but the first
    assert len(trained) == 18 and {"layer2.0.conv1", "layer3.0.conv1"} <= trained
    expect = {n: _official_rank(model.get_submodule(n).weight, scheme, rule) for n in trained}
    exported = trained if scheme == "decoupling" else trained - strided
    for n in trained:
        if n in exported:
            assert reps[n]["rank"] == expect[n], n
            assert isinstance(small.get_submodule(n), L.Factorized), n
        else:   # stride-2 convs: trained, left dense at export by channel/spatial
            assert reps[n]["rank"] is None and reps[n]["skipped"].startswith("stride (2, 2)")
    conv_macs = count_macs(small, SHAPE, conv_only=True)
    official = official_conv_macs(model, {n: (scheme, expect[n]) for n in exported})
    claimed = claimed_conv_macs(conv_macs, report)
    if scheme == "decoupling":
        # the deployed model also runs its factorized stride-2 convs, which the formula counts dense:
        # the paper's basis (claimed) is the formula's number, the real count is higher
        assert report.info["counted_dense"] == ["layer2.0.conv1", "layer3.0.conv1"]
        assert claimed == official and conv_macs > official
    else:
        assert "counted_dense" not in report.info
        assert conv_macs == claimed == official
    with torch.no_grad():
        assert small(torch.zeros(2, *SHAPE)).shape == (2, 10)


def _rankbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH="", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "rankbench.bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry,scheme,fits", [
    ("{name: svd}", "channel", "accepted: linear"),
    ("{name: trp, scheme: spatial}", "spatial", "accepted: linear"),    # TRP projects linear layers too
])
def test_a_method_that_selects_no_layer_is_refused_before_training(tmp_path, entry, scheme, fits):
    spec = tmp_path / "nothing.yaml"
    spec.write_text(f"sweep: nothing\nmodel: mlp\ntrain: {{epochs: 1}}\nmethods: [{entry}]\n")
    r = _rankbench("run", str(spec), "--results", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert err[0].startswith(f"error: methods[0]({entry.split()[1].rstrip('},')}).scheme: '{scheme}': "
                             "selects no layer of model 'mlp'"), err[0]
    assert err[0].endswith(fits), err[0]
    assert not (tmp_path / "res").exists()          # refused before any folder, Ray or training
