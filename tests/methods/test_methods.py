"""Every registered method (built-in, test-defined plugin, entry-point plugin) behaves the way the
harness relies on, plus the training-time behaviour of TRP and DeepTwist against references."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

import plugin_example  # noqa: F401  (registers "example-lowrank", so the conformance suite covers it)
from rankbench.bench.models.builtin import build_model
from rankbench.methods.api import conformance
from rankbench.methods import lowrank as L
from rankbench.methods.api import registry
from rankbench.methods.api.base import Context, Method, MethodReport, start

SHAPE = (1, 8, 8)  # digits
# every registered method but the test-only ones other test files register (named test_*)
ALL = [n for n in registry.available() if not n.startswith("test_")]


def _ctx(shape=SHAPE) -> Context:
    def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:   # fixed calibration data
        g = torch.Generator().manual_seed(0)
        return [(torch.randn((8, *shape), generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]

    return Context(input_shape=shape, num_classes=10, steps_per_epoch=4, epochs=1, train_batches=batches)


def _attach(method: Method, model: nn.Module, ctx: Context | None = None) -> None:
    """What the harness does (``rankbench.methods.api.base.start``), with a default context."""
    start(method, model, ctx or _ctx())


def _model(name: str = "cnn", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, 10, SHAPE).eval()


BUILTIN = {"dense", "svd", "trp", "arsvd", "deeptwist", "zhang", "jaderberg", "svd-training", "tucker2", "cp"}


def test_builtin_methods_are_registered():
    assert BUILTIN | {"example-lowrank"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_conformance_suite_passes(name):
    """rankbench.methods.api.conformance (what `rankbench check-method NAME` runs) for every registered method."""
    failed = [str(r) for r in conformance.run(name) if not r.ok]
    assert not failed, "\n".join(failed)


def test_conformance_suite_catches_a_broken_method(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Sloppy(Method):
        """Keeps state it does not restore, names a hook wrong, validates nothing."""

        def __init__(self, scale: float = 1.0) -> None:
            self.scale, self.seen = scale, 0

        def before_step(self, model, step):
            self.seen += 1

        def extra_losses(self, model, step):  # a near miss of extra_loss: never called
            return None

        def state_dict(self):
            return {"seen": self.seen}

    class Untrained(Method):
        starts_from_baseline = True

        def after_backward(self, model, step):   # never called: a method from the baseline never trains
            pass

    registry.register("test_sloppy")(Sloppy)
    registry.register("test_untrained")(Untrained)
    results = {r.check: r for r in conformance.run("test_sloppy")}
    assert not results["parameters"].ok and "'scale' accepted object()" in results["parameters"].detail
    assert not results["hooks"].ok and "'extra_losses' (did you mean the hook 'extra_loss'?)" in results["hooks"].detail
    assert not results["resume"].ok and "does not restore" in results["resume"].detail
    assert results["compress"].ok and results["macs"].ok and results["round-trip"].ok
    hooks = conformance.run("test_untrained", ("hooks",))[0]
    assert not hooks.ok and "never calls after_backward" in hooks.detail


def test_unknown_parameter_error_names_method_and_parameter():
    with pytest.raises(ValueError, match=r"^methods\.trp: 'nope': unknown parameter"):
        registry.build("trp", {"nope": 1})


def test_choice_parameters_are_declared_validated_and_listed(capsys, monkeypatch):
    assert registry.choices("trp")["solver"][:4] == ("svd", "gram", "auto", "warm")
    assert registry.choices("trp")["stride2"] == ("official", "include", "exclude")
    assert registry.choices("svd-training")["sparsity"] == ("l1", "hoyer")   # from a Literal annotation
    # the method's own check speaks first (it may explain more) ...
    with pytest.raises(ValueError, match=r"^solver: 'qr'; accepted: svd, gram, auto, warm"):
        registry.build("trp", {"solver": "qr"})
    # ... and a declared choice the method does not check itself is refused by the registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Lax(Method):
        def __init__(self, mode: Literal["fast", "exact"] = "fast", level: int = 1) -> None:
            self.mode, self.level = mode, level

        choices = {"level": (1, 2, 3)}

    registry.register("test_lax")(Lax)
    assert registry.choices("test_lax") == {"mode": ("fast", "exact"), "level": (1, 2, 3)}
    with pytest.raises(ValueError, match=r"^mode: 'slow'; accepted: fast\|exact$"):
        registry.build("test_lax", {"mode": "slow"})
    with pytest.raises(ValueError, match=r"^level: True; accepted: 1\|2\|3$"):   # True == 1, but not a level
        registry.build("test_lax", {"level": True})
    assert registry.build("test_lax", {"mode": "exact", "level": 3}).mode == "exact"
    from rankbench.bench.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "    solver: svd|gram|auto|warm|" in out and "    sparsity: l1|hoyer = 'hoyer'" in out
    assert len([line for line in out.splitlines() if not line.startswith(" ")]) >= 9


def test_unknown_method_names_the_accepted_ones():
    with pytest.raises(KeyError, match=r"method: 'tpr': unknown method \(did you mean 'trp'\?\); accepted: .*dense"):
        registry.get_method("tpr")


# --- plugins ----------------------------------------------------------------------------------

class EntryPointPlugin(Method):
    """Not decorated: only the entry point below registers it."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale


def test_plugin_defined_in_a_test_module_is_found_by_name():
    assert registry.get_method("example-lowrank") is plugin_example.ExampleLowRank
    assert "example-lowrank" in registry.available()


def test_plugin_exposed_through_an_entry_point_is_found_by_name(monkeypatch):
    ep = metadata.EntryPoint(name="ep-plugin", value=f"{__name__}:EntryPointPlugin",
                             group=registry.ENTRY_POINT_GROUP)
    seen = []

    def fake_entry_points(**kw):
        seen.append(kw)
        return [ep] if kw.get("group") == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the real one alone
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry.metadata, "entry_points", fake_entry_points)
    assert registry.get_method("ep-plugin").__name__ == "EntryPointPlugin"
    assert "ep-plugin" in registry.available() and "trp" in registry.available()
    assert seen == [{"group": "rankbench.methods"}]
    assert registry.build("ep-plugin", {"scale": 2.0}).scale == 2.0


def test_plugin_doc_shows_exactly_the_tested_example():
    root = Path(__file__).resolve().parents[2]
    doc = (root / "README.md").read_text().split("## Writing a method", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert blocks and blocks[0] == (root / "tests" / "methods" / "plugin_example.py").read_text()
    assert len(blocks[0].splitlines()) <= 40


def test_example_plugin_projects_every_period():
    model = _model()
    m = registry.build("example-lowrank", {"period": 2, "rule": "rank:1"})
    _attach(m, model)
    w = model.get_submodule(m.names[0]).weight
    before = w.detach().clone()
    m.before_step(model, 1)
    assert torch.equal(w, before)
    m.before_step(model, 2)
    assert torch.linalg.matrix_rank(L.to_matrix(w.detach(), "channel")) == 1


# --- TRP ----------------------------------------------------------------------------------------

def _ref_energy_svd(w: torch.Tensor, scheme: str, e: float | None):
    m = L.to_matrix(w.detach().double(), scheme)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = len(s) if e is None else int(((s ** 2).cumsum(0) / (s ** 2).sum() < e).sum()) + 1
    r = min(r, len(s))
    proj = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
    sub = u[:, :r] @ vh[:r]
    return r, L.from_matrix(proj, scheme, w.shape).float(), L.from_matrix(sub, scheme, w.shape).float()


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_trp_projects_and_adds_nuclear_subgradient_on_period_steps(scheme):
    model = _model()
    trp = registry.build("trp", {"scheme": scheme, "period": 2, "nuclear": 0.1})
    _attach(trp, model)
    assert trp.names == ["3", "6", "9"]  # convs larger than 1x1 except the first (incl. stride 2)
    x, y = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    first = model.get_submodule("0").weight.detach().clone()
    refs = {n: _ref_energy_svd(model.get_submodule(n).weight, scheme, 0.9) for n in trp.names}

    trp.before_step(model, 0)
    for n in trp.names:
        assert torch.allclose(model.get_submodule(n).weight, refs[n][1], atol=1e-5)
    assert torch.equal(model.get_submodule("0").weight, first)  # unchosen layer untouched
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {n: model.get_submodule(n).weight.grad.clone() for n in trp.names}
    trp.after_backward(model, 0)
    for n in trp.names:
        added = model.get_submodule(n).weight.grad - grads[n]
        assert torch.allclose(added, 0.1 * refs[n][2], atol=1e-5)

    # step 1 is not a period step: neither the weights nor the gradients move
    w = {n: model.get_submodule(n).weight.detach().clone() for n in trp.names}
    trp.before_step(model, 1)
    g = {n: model.get_submodule(n).weight.grad.clone() for n in trp.names}
    trp.after_backward(model, 1)
    for n in trp.names:
        assert torch.equal(model.get_submodule(n).weight, w[n])
        assert torch.equal(model.get_submodule(n).weight.grad, g[n])


def test_trp_ablations_nuclear_only_and_projection_only():
    model = _model()
    nu = registry.build("trp", {"project": False, "nuclear": 0.5})
    _attach(nu, model)
    w = {n: model.get_submodule(n).weight.detach().clone() for n in nu.names}
    nu.before_step(model, 0)
    for n in nu.names:
        assert torch.equal(model.get_submodule(n).weight, w[n])  # not projected
        model.get_submodule(n).weight.grad = torch.zeros_like(w[n])
    nu.after_backward(model, 0)
    for n in nu.names:  # the full sub-gradient U V^T of ||W||_*
        assert torch.allclose(model.get_submodule(n).weight.grad, 0.5 * _ref_energy_svd(w[n], "channel", None)[2],
                              atol=1e-5)

    model = _model()
    proj = registry.build("trp", {"nuclear": 0.0})
    _attach(proj, model)
    for n in proj.names:
        model.get_submodule(n).weight.grad = torch.ones_like(model.get_submodule(n).weight)
    proj.before_step(model, 0)
    proj.after_backward(model, 0)
    for n in proj.names:
        assert torch.equal(model.get_submodule(n).weight.grad, torch.ones_like(model.get_submodule(n).weight))


def test_trp_export_after_projection_keeps_the_trained_rank():
    model = _model()
    trp = registry.build("trp", {"energy": 0.5, "export": "energy:0.999"})
    _attach(trp, model)
    trp.before_step(model, 0)
    ranks = {n: int(torch.linalg.matrix_rank(L.to_matrix(model.get_submodule(n).weight.detach(), "channel")))
             for n in trp.names}
    small = trp.compress(model)
    rep = {r["name"]: r for r in trp.report().layers}
    for n in ("3", "9"):    # trained and exported; stride-2 "6" was trained, left dense (official rule)
        assert rep[n]["rank"] == ranks[n]
        assert isinstance(small.get_submodule(n), L.Factorized)
    assert rep["6"]["skipped"].startswith("stride (2, 2)") and not isinstance(small.get_submodule("6"), L.Factorized)
    assert trp.report().rule == "energy:0.999" and trp.report().scheme == "channel"
    assert rep["0"]["skipped"].startswith("first conv")


def test_trp_layer_choice_options():
    model = _model()
    t = registry.build("trp", {"stride2": "exclude"})
    _attach(t, model)
    assert t.names == ["3", "9"]
    t = registry.build("trp", {"layers": "all"})
    _attach(t, model)
    assert t.names == ["0", "3", "6", "9"]


@pytest.mark.parametrize("scheme,stride2,trained,exported,counted_dense", [
    # the official rule: stride-2 conv "6" is projected in training; channel/spatial keep it dense
    # at export, decoupling factorizes it (at any cost), and the official formula counts it dense
    ("channel", "official", ["3", "6", "9"], ["3", "9"], []),
    ("spatial", "official", ["3", "6", "9"], ["3", "9"], []),
    ("decoupling", "official", ["3", "6", "9"], ["3", "6", "9"], ["6"]),
    ("channel", "include", ["3", "6", "9"], ["3", "6", "9"], []),
    ("channel", "exclude", ["3", "9"], ["3", "9"], []),
])
def test_trp_stride2_rule_in_training_and_at_export(scheme, stride2, trained, exported, counted_dense):
    model = _model()
    t = registry.build("trp", {"scheme": scheme, "stride2": stride2, "export": "rank:1"})
    _attach(t, model)
    assert t.names == trained
    assert [n for n, r in t.choose_layers(model) if r is None] == exported
    t.compress(model)
    rep = {r["name"]: r for r in t.report().layers}
    assert [n for n in ("0", "3", "6", "9") if rep[n]["rank"] is not None] == exported
    assert t.report().info.get("counted_dense", []) == counted_dense
    with pytest.raises(ValueError, match=r"^stride2: 'yes'; accepted: official .*include, exclude$"):
        registry.build("trp", {"stride2": "yes"})


def test_trp_period_basis_epoch_restarts_the_count_every_epoch():
    g = registry.build("trp", {"period": 3})
    e = registry.build("trp", {"period": 3, "period_basis": "epoch"})
    ctx = Context(input_shape=SHAPE, num_classes=10, steps_per_epoch=4, epochs=2)
    for m in (g, e):
        _attach(m, _model(), ctx)
    # 4 steps an epoch: global steps 0, 3, 6; per epoch batch 0 and 3 (global 0, 3, 4, 7)
    assert [s for s in range(8) if g._active(s)] == [0, 3, 6]
    assert [s for s in range(8) if e._active(s)] == [0, 3, 4, 7]


# --- DeepTwist, ARSVD, SVD ----------------------------------------------------------------------

def test_deeptwist_replaces_every_period_with_tiles_and_exports_tiled():
    model = _model()
    dt = registry.build("deeptwist", {"period": 3, "rule": "rank:2", "tiles": 4})
    _attach(dt, model)
    w = model.get_submodule("9").weight  # 64 x (32*9): four tiles of 8 input channels (72 columns)
    before = w.detach().clone()
    dt.before_step(model, 0)
    dt.before_step(model, 2)
    assert torch.equal(w, before)  # dense training between replacements
    dt.before_step(model, 3)
    m = L.to_matrix(w.detach(), "channel")
    orig = torch.tensor_split(L.to_matrix(before, "channel"), 4, dim=1)
    for tile, o in zip(torch.tensor_split(m, 4, dim=1), orig):
        u, s, vh = torch.linalg.svd(o.double(), full_matrices=False)
        assert torch.allclose(tile.double(), u[:, :2] @ torch.diag(s[:2]) @ vh[:2], atol=1e-4)
    assert int(torch.linalg.matrix_rank(m)) == 8  # tiles are approximated independently
    assert dt.export == "rank:2"
    x = torch.randn(2, *SHAPE)
    small = dt.compress(model).eval()
    rep = {r["name"]: r for r in dt.report().layers}
    assert rep["9"]["tiles"] == 4 and rep["9"]["rank"] == 2
    with torch.no_grad():  # the tiled export is exact on the tiled-trained layers
        dense = build_model("cnn", 10, SHAPE).eval()
        dense.load_state_dict(model.state_dict())
        for n in dt.names:
            dense.get_submodule(n).weight.copy_(L.reconstruct(model.get_submodule(n).weight, "channel", 2, 4))
        assert torch.allclose(small(x), dense(x), atol=1e-4)


def test_deeptwist_tiles_validation_and_untiled_fallback():
    with pytest.raises(ValueError, match="^tiles: 2: with scheme 'spatial'"):
        registry.build("deeptwist", {"scheme": "spatial", "tiles": 2})
    model = _model()
    dt = registry.build("deeptwist", {"tiles": 3, "rule": "rank:1"})
    _attach(dt, model)
    assert dt._tiles == [1, 1, 1]  # 16 and 32 input channels: 3 divides neither
    dt.compress(model)
    assert {r["tiles"] for r in dt.report().layers} == {1}


def test_speedup_export_out_of_reach_fails_at_attach_before_training():
    for name, key in (("trp", "export"), ("deeptwist", "export"), ("svd", "rule")):
        m = registry.build(name, {key: "speedup:500"})
        with pytest.raises(ValueError, match=rf"^{key}: 'speedup:500.0': not reachable.*accepted: speedup up to"):
            _attach(m, _model())


def test_arsvd_rules_and_f1_report():
    with pytest.raises(ValueError, match=r"^rule: 'value:0.05'; accepted: \"energy:E\" \(v1\) or \"entropy:TAU\" \(v2\)"):
        registry.build("arsvd", {"rule": "value:0.05"})
    model = _model("mlp")
    m = registry.build("arsvd", {"rule": "entropy:0.5"})
    assert m.starts_from_baseline
    _attach(m, model)
    small = m.compress(model)
    rep = m.report()
    chosen = [r for r in rep.layers if r["rank"] is not None]
    assert [r["name"] for r in rep.layers] == ["1", "3", "5"] and chosen
    for r in chosen:  # per-layer adaptive rank from the layer's own spectrum
        s = torch.linalg.svdvals(model.get_submodule(r["name"]).weight.detach().double())
        assert r["rank"] == L.rank_from_rule(s, "entropy:0.5")
    assert "f1" in rep.info["metrics"]
    assert small(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_svd_starts_from_baseline_and_finetunes_when_asked():
    assert registry.get_method("svd").starts_from_baseline
    assert registry.build("svd", {"finetune_epochs": 2}).finetune_epochs == 2
    assert registry.build("svd", {}).finetune_epochs == 0
    with pytest.raises(ValueError, match="^finetune_epochs: -1; accepted: an int >= 0"):
        registry.build("svd", {"finetune_epochs": -1})
    with pytest.raises(RuntimeError, match="attach"):
        registry.build("svd", {}).compress(_model())


# --- the Method API ---------------------------------------------------------------------------

def test_register_keeps_the_class_name_and_the_key_in_agreement(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Named(Method):
        name = "named-one"

    with pytest.raises(ValueError, match=r"@register\('other'\): .*Named declares name = 'named-one'"):
        registry.register("other")(Named)
    assert registry.register("named-one")(Named).name == "named-one"

    class Unnamed(Method):
        pass

    assert registry.register("unnamed-one")(Unnamed).name == "unnamed-one"   # no name of its own: the key
    assert all(registry.get_method(n).name == n for n in ALL)


def test_defaults_of_every_hook_do_nothing():
    m, model = Method(), _model()
    assert m.ctx is None and m.finetune_epochs == 0
    assert m.extra_loss(model, 0) is None and m.param_groups(model) is None
    assert m.compress(model) is model and m.report() == MethodReport()
    assert m.state_dict() == {}
    m.load_state_dict({})


def test_check_param_raises_the_one_line_user_error():
    from rankbench.bench.checks import UserError
    from rankbench.methods.api.base import check_param

    with pytest.raises(UserError, match=r"^period: 0; accepted: an int >= 1$"):
        check_param("period", 0, False, "an int >= 1")
    check_param("period", 1, True, "an int >= 1")


def test_calibration_batches_come_from_the_context_or_fail_clearly():
    m = Method()
    with pytest.raises(RuntimeError, match="needs the trial context"):
        m.calibration_batches(2)
    m.ctx = Context(input_shape=SHAPE, num_classes=10, steps_per_epoch=4, epochs=1)
    with pytest.raises(RuntimeError, match=r"needs training data.*Context.train_batches is None"):
        m.calibration_batches(2)
    batch = (torch.zeros(4, *SHAPE), torch.zeros(4, dtype=torch.long))
    m.ctx.train_batches = lambda n: [batch] * n
    assert m.calibration_batches(3) == [batch] * 3
    with pytest.raises(ValueError, match=r"^calibration_batches: 0; accepted: an int >= 1"):
        m.calibration_batches(0)


def test_trp_state_dict_round_trips_the_warm_solver_state():
    model = _model()
    trp = registry.build("trp", {"solver": "warm", "energy": 0.3})   # small ranks: the warm start is kept
    _attach(trp, model)
    for step in range(3):
        trp.before_step(model, step)
    state = trp.state_dict()
    assert state["warm"]["warm"] > 0 and state["warm"]["starts"]
    other = registry.build("trp", {"solver": "warm", "energy": 0.3})
    _attach(other, _model())
    other.load_state_dict(state)
    got = other.state_dict()["warm"]
    assert (got["warm"], got["cold"]) == (state["warm"]["warm"], state["warm"]["cold"])
    assert all(ka == kb and torch.equal(a, b) for (ka, a), (kb, b) in zip(got["starts"], state["warm"]["starts"]))
    assert len(got["starts"]) == len(state["warm"]["starts"])


# --- the shipped spec that runs every method ----------------------------------------------------

METHODS_SPEC = Path(__file__).resolve().parents[2] / "bench" / "configs" / "methods.yaml"


def test_methods_spec_runs_every_builtin_method_at_a_matched_speedup():
    from rankbench.bench.spec.parse import load_spec

    sweep = load_spec(METHODS_SPEC)
    assert {t.method for t in sweep.trials} == BUILTIN
    assert len(sweep.trials) == len(BUILTIN) + 1          # one dense baseline per model (cnn, mlp)
    for t in sweep.trials:
        rules = [v for k, v in t.params_dict.items() if k in ("rule", "export")]
        if t.method not in ("dense", "arsvd"):             # ARSVD's rule is an energy: that is the method
            assert "speedup:2.0" in rules, t.label


@pytest.mark.slow
def test_methods_spec_prints_the_table_of_every_method(tmp_path):
    import subprocess
    import sys
    import time

    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rankbench.bench", "run", str(METHODS_SPEC), "--results", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHONPATH": ""})
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stdout + out.stderr
    table = [ln for ln in out.stdout.splitlines() if ln.startswith("| digits ")]
    assert {ln.split("|")[3].strip() for ln in table} == BUILTIN
    for ln in table:
        cells = [c.strip() for c in ln.split("|")]
        if cells[3] not in ("dense", "arsvd"):
            assert abs(float(cells[9].rstrip("x")) - 2.0) <= 0.04, ln
    print(f"methods.yaml ran in {took:.0f} s")


@pytest.mark.parametrize("name", ["svd", "trp"])
def test_a_float64_model_is_compressed_with_a_float64_example(name):
    # the MAC probe runs the model on Method.example_input: it must match the model's dtype
    model = _model().double()
    method = registry.build(name, {"scheme": "channel", "export": "speedup:1.5"} if name == "trp"
                            else {"scheme": "channel", "rule": "speedup:1.5"})
    _attach(method, model)
    assert method.example_input(model).dtype == torch.float64
    small = method.compress(model)
    assert next(small.parameters()).dtype == torch.float64
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    assert small(x).dtype == torch.float64
    assert L.model_macs(model, x[:1]) / L.model_macs(small, x[:1]) == pytest.approx(1.5, rel=0.1)


def test_the_baseline_is_one_method_and_the_trial_names_its_key():
    from rankbench.bench.trial import BASELINE

    baselines = [n for n in registry.available() if registry.get_method(n).is_baseline]
    assert baselines == [BASELINE]
    assert not registry.needs_baseline(BASELINE)
    assert registry.needs_baseline("svd") and not registry.needs_baseline("trp")


def test_a_builtin_method_writes_its_key_once_and_the_registry_names_the_class():
    import inspect

    for name in registry.available():
        cls = registry.get_method(name)
        assert cls.name == name
        if cls.__module__.startswith("rankbench.methods."):
            assert f'name = "{name}"' not in inspect.getsource(cls), name
