"""`rankbench speed --suite`: the GPU suite's parts run shrunk on a CPU (cpu-smoke), write one
JSON and a markdown summary, and every part produces rows; bad arguments are one line, exit 2;
the paper-rank weights keep the ranks they were built for."""
from __future__ import annotations

import json

import pytest
import torch

from rankbench.bench.cli import main
from rankbench.bench.models.builtin import build_model
from rankbench.bench.speed import core, ranks, suite
from rankbench.methods import lowrank


def test_cpu_smoke_suite_writes_json_and_summary_with_rows_from_every_part(tmp_path, capsys):
    out = tmp_path / "suite"                      # created: only its parent must exist
    assert main(["speed", "--suite", "cpu-smoke", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # the plan is printed before anything runs, one line per part in order
    assert printed.index("[suite cpu-smoke]") < printed.index("[suite] step ...")
    for part in suite.SUITE_PARTS:
        assert f"  {part} " in printed
    result = json.loads((out / "results.json").read_text())
    assert result["suite"] == "cpu-smoke" and result["device"] == "cpu"
    assert {"torch", "python", "cpu_count"} <= set(result["environment"])
    assert list(result["parts"]) == list(suite.SUITE_PARTS)
    for part, entry in result["parts"].items():
        assert entry["error"] is None and entry["skipped"] is None, (part, entry)
        assert entry["rows"], part
    parts = result["parts"]
    step = {r["variant"]: r for r in parts["step"]["rows"]}
    assert set(step) == {"plain"} | {f"trp-{sc}-{so}" for sc in ("channel", "spatial") for so in lowrank.SOLVERS}
    assert all(r["weights"].startswith("paper-ranks") and r["slowdown_vs_plain"] > 0 for r in step.values())
    compiled = {r["variant"] for r in parts["step-compiled"]["rows"]}
    assert compiled == {"plain-compiled", f"trp-channel-{core.default_solver()}-compiled"}
    proj = parts["projection"]["rows"]
    assert {r["weights"] for r in proj} == {"init", "trp-steady", "paper-ranks 2.17x (constructed spectra)",
                                           "paper-ranks 2.84x (constructed spectra)"}
    assert all(r["ranks_equal_exact"] for r in proj)
    paper = [r for r in proj if r["weights"].startswith("paper-ranks")]
    assert all(abs(r["speedup_at_ranks"] / r["target_speedup"] - 1) < 0.05 for r in paper)
    # the paper-rank rows of resnet20 run again at lr 0.1's step size, in both step and projection
    assert {r["step_size"] for r in paper} == {ranks.STEP_SIZE, 1e-2}
    assert {r["step_size"] for r in parts["step"]["rows"]} == {ranks.STEP_SIZE, 1e-2}
    assert {r["step_size"] for r in parts["step-compiled"]["rows"]} == {ranks.STEP_SIZE}
    (lat,) = parts["latency"]["rows"]
    assert lat["latency_speedup"] > 0 and lat["batch"] == 1
    (packed,) = parts["packed"]["rows"]
    assert packed["n"] == 2 and packed["aggregate_images_per_s"] > 0
    pipe = {(r["layout"], r["decode"]): r for r in parts["pipeline"]["rows"]}
    assert set(pipe) == {(lay, dec) for lay in ("imagefolder", "tar") for dec in ("pil", "torchvision")}
    assert all(r["images_per_s"] > 0 and r["skipped"] == 0 for r in pipe.values())
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# rankbench speed --suite cpu-smoke")
    for title in suite.summary_markdown.__globals__["TITLES"].values():
        assert f"## {title}" in summary
    assert "| svd ms | gram ms | auto ms | warm ms |" in summary   # the solvers side by side
    assert "| resnet20 | spatial | paper-ranks 2.84x (constructed spectra) | 0.01 |" in summary


def test_only_runs_the_named_parts_and_a_part_over_budget_is_skipped_not_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(suite.PART_RUNNERS, "latency", lambda plan, deadline: calls.append("latency") or [{"x": 1}])
    monkeypatch.setitem(suite.PART_RUNNERS, "packed", lambda plan, deadline: calls.append("packed") or [{"x": 1}])
    real = suite.make_plan

    def tight(*a, **k):  # packed alone is over the budget
        import dataclasses
        plan = real(*a, **k)
        return dataclasses.replace(plan, budget_s=5.0, estimate_s={"latency": 1.0, "packed": 60.0})
    monkeypatch.setattr(suite, "make_plan", tight)
    result = suite.run_suite("cpu-smoke", torch.device("cpu"), ["latency", "packed"], log=lambda s: None)
    assert calls == ["latency"] and list(result["parts"]) == ["latency", "packed"]
    assert "time budget" in result["parts"]["packed"]["skipped"] and not result["parts"]["packed"]["rows"]


def test_step_and_projection_skip_each_model_that_would_start_after_the_deadline():
    plan = suite.make_plan("cpu-smoke", torch.device("cpu"))
    rows = suite.part_step(plan, deadline=0.0)            # long past
    assert rows == [{"model": "resnet20", "what": "resnet20",
                     "skipped": "time budget: the suite's time was up before it started"}]
    rows = suite.part_projection(plan, deadline=0.0)
    assert [r["scheme"] for r in rows] == ["channel", "spatial"] and all("time budget" in r["skipped"] for r in rows)
    text = suite.summary_markdown({"suite": "cpu-smoke", "device": "cpu", "environment": suite.environment(
        torch.device("cpu")), "started": "now", "parts": {"projection": {"rows": rows, "seconds": 0.0,
                                                                          "skipped": None, "error": None}}})
    assert "time budget" in text


def test_a_failing_part_is_recorded_and_the_others_still_run(monkeypatch):
    def broken(plan, deadline):
        raise RuntimeError("cuSOLVER said no")
    monkeypatch.setitem(suite.PART_RUNNERS, "latency", broken)
    monkeypatch.setitem(suite.PART_RUNNERS, "pipeline", lambda plan, deadline: [{"layout": "tar"}])
    result = suite.run_suite("cpu-smoke", torch.device("cpu"), ["latency", "pipeline"], log=lambda s: None)
    assert result["parts"]["latency"]["error"] == "RuntimeError: cuSOLVER said no"
    assert result["parts"]["pipeline"]["rows"] == [{"layout": "tar"}]
    assert "Failed: `RuntimeError: cuSOLVER said no`" in suite.summary_markdown(result)


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda"], "--device: 'cuda': no CUDA device is available; accepted: auto or cpu"),
    (["--batch", "-1"], "--batch: -1; accepted: an integer >= 1"),
    (["--steps", "0"], "--steps: 0; accepted: an integer >= 1"),
    (["--warmup", "-2"], "--warmup: -2; accepted: an integer >= 0"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--out", "/no/such/folder/speed.json"],
     "--out: '/no/such/folder/speed.json': its parent folder does not exist; accepted: a path in an existing folder"),
    (["--suite", "cpu-smoke", "--out", "/no/such/folder/suite"],
     "--out: '/no/such/folder/suite': its parent folder does not exist; accepted: a path in an existing folder"),
    (["--suite", "cpu-smoke"], "--out: missing; accepted: a folder for the suite's results.json and summary.md"),
    (["--suite", "tpu", "--out", "x"], "--suite: 'tpu'; accepted: gpu, cpu-smoke"),
    (["--suite", "cpu-smoke", "--only", "memory", "--out", "x"],
     "--only: 'memory'; accepted: step, projection, latency, packed, pipeline, step-compiled"),
    (["--weights", "trained"], "--weights: 'trained'; accepted: paper, init"),
    (["--step-size", "1.5"], "--step-size: 1.5; accepted: a number in [0, 1)"),
    (["--device", "tpu"], "--device: 'tpu'; accepted: auto, cpu, cuda, cuda:N"),
])
def test_bad_arguments_are_refused_with_one_line_and_exit_2(args, message, capsys):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["speed", *args]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_gpu_suite_without_a_gpu_is_refused(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["speed", "--suite", "gpu", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --suite: 'gpu': no CUDA device is available; accepted: cpu-smoke on a machine without CUDA"


def test_gpu_plan_fits_its_budget_and_names_every_part():
    plan = suite.make_plan("gpu", torch.device("cpu"))
    assert set(plan.estimate_s) == set(suite.SUITE_PARTS) and sum(plan.estimate_s.values()) <= 10 * 60
    assert plan.budget_s < 10 * 60
    lines = suite.describe(plan, suite.SUITE_PARTS)
    assert len(lines) == 1 + len(suite.SUITE_PARTS)


@pytest.mark.parametrize("target", [2.17, 2.84])
def test_paper_rank_weights_keep_the_ranks_that_give_the_paper_speedup(target):
    scheme = "channel" if target == 2.17 else "spatial"
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32))
    pr = ranks.paper_rank_weights(model, "resnet20", scheme, target, torch.zeros(1, 3, 32, 32))
    assert abs(pr.speedup / target - 1) < 0.03           # as close as one rank fraction allows
    # the energy-0.9 rule TRP projects with keeps exactly the constructed ranks (exact SVD)
    _, sub = lowrank.project([w.double() for w in pr.weights], scheme, "energy:0.9", solver="svd")
    assert ranks.ranks_of(sub, scheme) == pr.ranks
    # and a small step between projections does not move them
    (moved,) = ranks.perturbed(pr.weights, 1)
    _, sub = lowrank.project([w.double() for w in moved], scheme, "energy:0.9", solver="svd")
    assert ranks.ranks_of(sub, scheme) == pr.ranks
    assert [tuple(w.shape) for w in pr.weights] == [tuple(model.get_submodule(n).weight.shape) for n in pr.names]


def test_warm_start_holds_at_paper_ranks_after_steps_of_the_size_lr_0_1_takes():
    # SGD at lr 0.1 moves ResNet-20's layers by 1-2e-2 per step; one filter pass from the last
    # step's block then falls short of the tolerance on the square spatial groups, and the
    # second pass (against the split the first proved) keeps them off the full SVD
    setup = core.Setup(torch.device("cpu"), False, False, 1, 1)
    rows = core.bench_projection("resnet20", setup, "spatial", repeats=2, kinds=("paper-ranks",), step_size=1e-2)
    by = {r["solver"]: r for r in rows}
    assert all(r["step_size"] == 1e-2 and r["ranks_equal_exact"] for r in rows)
    assert by["auto"]["warm_share"] == 1.0 and by["warm"]["warm_share"] == 1.0
    assert by["auto"]["max_rel_err_weight"] < 1e-5 and by["auto"]["max_rel_err_subgrad"] < 1e-5
