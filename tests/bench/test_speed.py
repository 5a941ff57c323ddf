"""`rankbench speed` on CPU with small sizes, and the fast projection solvers' equivalence in training."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from rankbench.bench import speed
from rankbench.bench.models.builtin import build_model
from rankbench.bench.speed.core import SpeedOptions
from rankbench.bench.train.loop import make_optimizer, train_step
from rankbench.methods import lowrank
from rankbench.methods.api import registry
from rankbench.methods.api.base import Context, start
from rankbench.methods.lowrank.solvers import WARM_TOL_FLOAT64

SHAPE = (1, 8, 8)
STEPS = 6
# Relative error of every parameter and buffer after the trajectory (Frobenius norm per tensor,
# scale-free, so BN statistics and biases are held to the same standard as weights). The warm
# start is certified within WARM_TOL_FLOAT64 (1e-10) of the exact subspace per projection, which
# moves the projected weight by at most sqrt(2) * 1e-10 / sqrt(0.9) (energy 0.9 kept) of its norm;
# summed over STEPS projections that is about 1e-9. Gram and SVD differ by float64 rounding
# (~1e-14). Measured: at most 2.3e-11 (warm, auto) and 3e-14 (gram); a warm start certified only
# to float32's 1e-5 already lands at 2e-8 to 8e-8, float32 rounding (~1e-7) or one rank kept
# differently (a whole singular value, >= 1e-3 of the norm) far above.
REL_TOL = STEPS * 1.5 * WARM_TOL_FLOAT64


def _trp_trajectory(model: torch.nn.Module, scheme: str, solver: str,
                    batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """STEPS training steps of period-1 TRP + Nu on ``model`` (float64) through the harness's
    own step, optimizer and Method hooks."""
    method = registry.build("trp", {"scheme": scheme, "solver": solver, "period": 1, "nuclear": 3.0e-4,
                                    "export": "energy:0.9"})
    start(method, model, Context(input_shape=SHAPE, num_classes=10, steps_per_epoch=STEPS, epochs=1))
    opt = make_optimizer(model, lr=0.05, momentum=0.9, weight_decay=1e-4)
    for step, (x, y) in enumerate(batches):
        train_step(model, x, y, opt, method, step)
    return model, method


def _steady_start(scheme: str) -> torch.nn.Module:
    """The digits CNN in float64, its TRP layers at rank 6, as TRP training leaves them after a
    while: the warm start then holds on most steps (He-initialised weights fill their spectrum,
    and no warm start is kept until the ranks fall below half the matrix)."""
    torch.manual_seed(0)
    model = build_model("cnn", 10, SHAPE).double()
    names = [n for n, why in lowrank.layer_choice(model, scheme) if why is None]
    weights = [model.get_submodule(n).weight for n in names]
    with torch.no_grad():
        low, _ = lowrank.project(weights, scheme, "rank:6", with_subgradient=False, solver="svd")
        for w, p in zip(weights, low):
            w.copy_(p)
    return model


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_trp_trained_with_each_fast_solver_follows_the_exact_svd_trajectory_in_float64(scheme):
    # The solvers are one projection computed different ways, so training with any of them is
    # the same training: proven exactly, in float64, over a few steps from the same weights on
    # the same batches. (In float32 over epochs their rounding differences, like two CPUs', are
    # amplified by SGD and the energy rule's rank threshold: what a model then learns is a
    # benchmark, BENCHMARKS.md, not an equality to test.)
    init = _steady_start(scheme)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, *SHAPE, generator=g, dtype=torch.float64), torch.randint(0, 10, (32,), generator=g))
               for _ in range(STEPS)]
    ref, exact = _trp_trajectory(copy.deepcopy(init), scheme, "svd", batches)
    small = exact.compress(copy.deepcopy(ref))
    ranks = {r["name"]: r["rank"] for r in exact.report().layers}
    assert exact.names and any(r is not None for r in ranks.values())   # some layers factorized
    moved = max(float((a - b).norm() / b.norm()) for a, b in zip(ref.state_dict().values(), init.state_dict().values())
                if b.is_floating_point() and b.norm() > 0)
    assert moved > 1e-3                 # the steps changed the weights far beyond the tolerance
    assert next(small.parameters()).dtype == torch.float64
    for solver in ("gram", "auto", "warm"):
        got, method = _trp_trajectory(copy.deepcopy(init), scheme, solver, batches)
        for (name, a), b in zip(got.state_dict().items(), ref.state_dict().values()):
            if a.is_floating_point():
                err = float((a - b).norm() / b.norm()) if b.norm() > 0 else float(a.norm())
                assert err <= REL_TOL, (scheme, solver, name, err)
            else:
                assert torch.equal(a, b), (scheme, solver, name)
        method.compress(got)
        assert {r["name"]: r["rank"] for r in method.report().layers} == ranks, (scheme, solver)
        # the warm start held on most steps (the first runs the full solve for every shape
        # group), so this compared the warm path, not its fallback; auto keeps one on the CPU
        # (spatial: its square group falls back to the SVD where the certificate fails)
        info = method.report().info
        if solver == "gram":
            assert "warm_start" not in info
        else:
            counts = info["warm_start"]
            assert counts["warm"] > counts["cold"] > 0, (scheme, solver, counts)


def test_speed_runs_on_cpu_and_writes_every_section(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed.main(["--device", "cpu", "--model", "resnet20", "--steps", "1", "--batch", "4",
                       "--compile", "aot_eager", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training step" in printed and "projection of all TRP layers" in printed
    result = json.loads(out.read_text())
    variants = {r["variant"] for r in result["step"]}
    solvers = ("svd", "gram", "auto", "warm")
    default = speed.core.default_solver()
    assert variants == {"plain", "plain-compiled", f"trp-channel-{default}-compiled",
                        f"trp-spatial-{default}-compiled"} | \
        {f"trp-{sc}-{so}" for sc in ("channel", "spatial") for so in solvers}
    # TRP starts from weights at the paper's ranks (constructed), and says so
    assert {r["weights"] for r in result["step"]} == {"paper-ranks 2.17x (constructed spectra)",
                                                      "paper-ranks 2.84x (constructed spectra)"}
    plain_ms = {r["variant"]: r["ms"] for r in result["step"] if r["variant"].startswith("plain")}
    for r in result["step"]:   # throughput and slowdown follow from the timed step, whatever the CPU
        assert r["model"] == "resnet20" and r["batch"] == 4 and r["ms"] > 0
        assert r["images_per_s"] == pytest.approx(4 / (r["ms"] / 1e3))
        # a compiled TRP step is compared with the compiled plain step
        base = plain_ms["plain-compiled" if r["variant"].endswith("-compiled") else "plain"]
        assert r["slowdown_vs_plain"] == pytest.approx(r["ms"] / base)
    # the solvers that keep a warm start (warm, auto) say how often it held; the others say nothing
    assert all((r["warm_share"] is not None) == any(f"-{so}" in r["variant"] for so in ("warm", "auto"))
               for r in result["step"])
    proj = {(r["weights"].split(" ")[0], r["scheme"], r["solver"]): r for r in result["projection"]}
    assert set(proj) == {(w, sc, so) for w in ("init", "trp-steady", "paper-ranks") for sc in ("channel", "spatial")
                         for so in solvers}
    for r in proj.values():  # every solver keeps the exact ranks, to float32 accuracy
        assert r["ranks_equal_exact"] and r["rank_sum"] == r["exact_rank_sum"]
        assert r["max_rel_err_weight"] < 1e-4 and r["max_rel_err_subgrad"] < 1e-4
    # He-initialised weights fill their spectrum (no warm start is kept); TRP-steady ones take it
    assert proj[("init", "channel", "warm")]["warm_share"] == 0
    assert proj[("trp-steady", "channel", "warm")]["warm_share"] > 0.5
    # at the paper's ranks too, on the spatial scheme's square matrices (certified, so exact ranks)
    assert proj[("paper-ranks", "spatial", "warm")]["warm_share"] > 0.5
    assert proj[("paper-ranks", "spatial", "auto")]["warm_share"] > 0.5
    (lat,) = result["latency"]
    assert lat["macs_speedup"] == pytest.approx(2.0, rel=0.02)
    # each model on its fastest layout of one shared menu, named; plain eager beside it, same run
    from rankbench.bench.measure.inference import CPU_LAYOUTS
    assert lat["layout"] in CPU_LAYOUTS and lat["dense_layout"] in CPU_LAYOUTS
    tried = {(r["which"], r["layout"]): r for r in result["latency_layouts"]}
    assert set(tried) == {(w, lay) for w in ("dense", "decomposed") for lay in CPU_LAYOUTS}
    for which, ms, layout in (("dense", lat["dense_ms"], lat["dense_layout"]), ("decomposed", lat["ms"], lat["layout"])):
        times = {lay: tried[(which, lay)]["ms"] for lay in CPU_LAYOUTS}
        assert ms == times[layout] == min(times.values()) > 0, which      # its fastest, never a slower one
        assert [lay for lay in CPU_LAYOUTS if tried[(which, lay)]["chosen"]] == [layout], which
    assert lat["latency_speedup"] == pytest.approx(lat["dense_ms"] / lat["ms"])
    assert lat["eager_speedup"] == pytest.approx(tried[("dense", "contiguous")]["ms"] / tried[("decomposed", "contiguous")]["ms"])
    assert "latency of every layout tried" in printed
    assert result["packed"] == [{"skipped": "packing several trials on one GPU needs CUDA"}]


def test_speed_names_an_unknown_model():
    with pytest.raises(ValueError, match=r"--model: 'vgg'; accepted: resnet20"):
        speed.run_speed(["vgg"], SpeedOptions(device="cpu"))


def test_rankbench_speed_is_a_cli_command_with_one_line_errors(capsys):
    from rankbench.bench.cli import main

    assert main(["speed", "--device", "cpu", "--model", "vgg"]) == 2
    assert capsys.readouterr().err.strip() == "error: --model: 'vgg'; accepted: resnet20, resnet56, resnet18, resnet50"


def test_only_runs_the_parts_asked_for_and_names_an_unknown_one():
    result = speed.run_speed(["resnet20"], SpeedOptions(device="cpu", parts=["projection"]), log=lambda s: None)
    assert result["projection"] and not result["step"] and not result["latency"] and not result["packed"]
    with pytest.raises(ValueError, match=r"--only: 'memory'; accepted: step, projection, latency, packed"):
        speed.run_speed(["resnet20"], SpeedOptions(device="cpu", parts=["memory"]))
