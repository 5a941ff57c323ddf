"""`rankbench speed` on CPU with small sizes, and the fast projection solver's equivalence in training."""
from __future__ import annotations

import json

import pytest

from bench import speed
from bench.run import run_trial
from bench.spec import parse_spec

SPEC = """
sweep: solver
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 3, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 3}
methods:
  - {name: trp, scheme: channel, period: 1, nuclear: 3.0e-4, export: "energy:0.9", solver: [svd, auto, warm]}
"""


def test_trp_trained_with_the_fast_solver_matches_the_exact_svd_on_digits(tmp_path):
    rows = {}
    for t in parse_spec(SPEC).trials:
        row = run_trial(t, tmp_path)
        assert row["status"] == "ok", row["error"]
        rows[t.params_dict["solver"]] = row
    exact = rows["svd"]
    # 3 epochs of projection every step: float32-level differences in the projected weights grow
    # through SGD as any rounding difference does (measured: 2 of 360 validation images), but must
    # not change what the model learns (within 1 point; seeds differ by more) or the ranks it keeps
    for fast in ("auto", "warm"):
        assert abs(exact["top1"] - rows[fast]["top1"]) <= 1.0, fast
        assert [lay["rank"] for lay in exact["layers"]] == [lay["rank"] for lay in rows[fast]["layers"]], fast
    # the warm start held on most steps (the first, and any group whose rank fills half its
    # matrix, run the full eigensolve), so this compared the warm path, not a fallback
    counts = rows["warm"]["method_info"]["warm_start"]
    assert counts["warm"] > counts["cold"] > 0, counts


def test_speed_runs_on_cpu_and_writes_every_section(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed.main(["--device", "cpu", "--model", "resnet20", "--steps", "1", "--batch", "4",
                       "--compile", "aot_eager", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training step" in printed and "projection of all TRP layers" in printed
    result = json.loads(out.read_text())
    variants = {r["variant"] for r in result["step"]}
    solvers = ("svd", "gram", "auto", "warm")
    assert variants == {"plain", "plain-compiled", "trp-channel-warm-compiled", "trp-spatial-warm-compiled"} | \
        {f"trp-{sc}-{so}" for sc in ("channel", "spatial") for so in solvers}
    # TRP starts from weights at the paper's ranks (constructed), and says so
    assert {r["weights"] for r in result["step"]} == {"paper-ranks 2.17x (constructed spectra)",
                                                      "paper-ranks 2.84x (constructed spectra)"}
    assert all(r["images_per_s"] > 0 and r["slowdown_vs_plain"] > 0 for r in result["step"])
    assert all((r["warm_share"] is not None) == ("-warm" in r["variant"]) for r in result["step"])
    proj = {(r["weights"].split(" ")[0], r["scheme"], r["solver"]): r for r in result["projection"]}
    assert set(proj) == {(w, sc, so) for w in ("init", "trp-steady", "paper-ranks") for sc in ("channel", "spatial")
                         for so in solvers}
    for r in proj.values():  # every solver keeps the exact ranks, to float32 accuracy
        assert r["ranks_equal_exact"] and r["rank_sum"] == r["exact_rank_sum"]
        assert r["max_rel_err_weight"] < 1e-4 and r["max_rel_err_subgrad"] < 1e-4
    # He-initialised weights fill their spectrum (no warm start is kept); TRP-steady ones take it
    assert proj[("init", "channel", "warm")]["warm_share"] == 0
    assert proj[("trp-steady", "channel", "warm")]["warm_share"] > 0.5
    (lat,) = result["latency"]
    assert lat["macs_speedup"] == pytest.approx(2.0, rel=0.02) and lat["latency_speedup"] > 0
    # each model on its fastest layout of one shared menu, named; plain eager beside it, same run
    from bench.inference import CPU_LAYOUTS
    assert lat["layout"] in CPU_LAYOUTS and lat["dense_layout"] in CPU_LAYOUTS and lat["eager_speedup"] > 0
    tried = {(r["which"], r["layout"]): r for r in result["latency_layouts"]}
    assert set(tried) == {(w, lay) for w in ("dense", "decomposed") for lay in CPU_LAYOUTS}
    assert tried[("decomposed", lat["layout"])]["chosen"] and tried[("decomposed", lat["layout"])]["ms"] == lat["ms"]
    assert "latency of every layout tried" in printed
    assert result["packed"] == [{"skipped": "packing several trials on one GPU needs CUDA"}]


def test_speed_names_an_unknown_model():
    with pytest.raises(ValueError, match=r"--model: 'vgg': unknown; accepted: resnet20"):
        speed.run_speed(["vgg"], device="cpu")


def test_rankbench_speed_is_a_cli_command_with_one_line_errors(capsys):
    from bench.cli import main

    assert main(["speed", "--device", "cpu", "--model", "vgg"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --model: 'vgg': unknown; accepted: resnet20, resnet56, resnet18, resnet50"


def test_only_runs_the_parts_asked_for_and_names_an_unknown_one():
    result = speed.run_speed(["resnet20"], device="cpu", parts=["projection"], log=lambda s: None)
    assert result["projection"] and not result["step"] and not result["latency"] and not result["packed"]
    with pytest.raises(ValueError, match=r"--only: 'memory': unknown; accepted: step, projection, latency, packed"):
        speed.run_speed(["resnet20"], device="cpu", parts=["memory"])
