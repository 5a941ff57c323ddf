"""`rankbench plan`: the schedule under the queue's order (exact, on given durations), and the
command on a tiny spec: steps counted from the data, timings written and reused, bad values refused."""
from __future__ import annotations

import json
import math

import pytest

from rankbench.bench.checks import UserError
from rankbench.bench.cli import main
from rankbench.bench.speed.plan import TrialCost, makespan


def cost(tid: str, seconds: float, amount: float = 1.0, baseline: str | None = None, workers: int = 1,
         resource: str = "GPU") -> TrialCost:
    return TrialCost(tid, tid, resource, amount, workers, 0, 0.0, 0, 0.0, 0.0, baseline, seconds=seconds)


def schedule(costs: list[TrialCost], per_node: float, nodes: int = 1) -> dict[str, tuple[float, float, list[int]]]:
    return {s.id: (s.start, s.end, s.nodes) for s in makespan(costs, per_node, nodes)}


def test_dependants_wait_for_their_baseline_and_later_trials_pass_them():
    s = schedule([cost("base", 10), cost("long", 20), cost("d1", 5, baseline="base"), cost("d2", 5, baseline="base"),
                  cost("free", 3)], per_node=3)
    assert s["base"][:2] == (0, 10) and s["long"][:2] == (0, 20)
    assert s["free"][:2] == (0, 3)                     # passes d1 and d2, which wait for base
    assert s["d1"][:2] == (10, 15) and s["d2"][:2] == (10, 15)
    s = schedule([cost("base", 10), cost("d1", 5, baseline="base"), cost("other", 1)], per_node=1)
    assert s["d1"][:2] == (10, 15) and s["other"][:2] == (15, 16)   # one GPU: in the queue's order


def test_packed_trials_share_a_gpu_and_a_data_parallel_trial_spans_nodes():
    s = schedule([cost("a", 4, amount=0.5), cost("b", 4, amount=0.5), cost("c", 4, amount=0.5)], per_node=1)
    assert [s[k][0] for k in "abc"] == [0, 0, 4]
    s = schedule([cost("ddp", 6, amount=2, workers=2)], per_node=1, nodes=2)
    assert s["ddp"] == (0, 6, [0, 1])


def test_a_trial_no_node_can_hold_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"^plan: .*needs 2"):
        makespan([cost("big", 1, amount=2)], per_node=1, nodes=2)


SPEC = """
sweep: p
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 2, batch_size: 100}
resources: {cpus: 1, gpus: 0}
measure: {latency_repeats: 2}
methods:
  - {name: dense}
  - {name: svd, rule: "speedup:2.0", finetune_epochs: 1}
  - {name: trp, scheme: channel, export: "speedup:2.0"}
"""


def test_plan_on_a_tiny_spec_counts_steps_orders_trials_and_reuses_timings(tmp_path, capsys):
    spec = tmp_path / "p.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "plan.json"
    assert main(["plan", str(spec), "--cpus", "2", "--steps", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sweep: 3 trials" in printed and "CPU-hours" in printed
    r = json.loads(out.read_text())
    by = {c["label"].split("[")[0].split(" ")[0]: c for c in r["trials"]}
    spe = math.ceil(1437 / 100)           # digits: 1797 images, 20% held out
    assert by["dense"]["steps"] == 2 * spe and by["trp"]["steps"] == 2 * spe
    assert by["svd"]["steps"] == 1 * spe and by["svd"]["baseline"] == by["dense"]["id"]
    assert all(c["step_s"] > 0 and c["seconds"] > c["fixed_s"] > 0 for c in (by["dense"], by["trp"]))
    start = {s["id"]: s for s in r["schedule"]}
    assert start[by["svd"]["id"]]["start"] >= start[by["dense"]["id"]]["end"]
    assert r["makespan_s"] == max(s["end"] for s in r["schedule"])

    # the same timings planned on one CPU: nothing timed again, everything in sequence
    again = tmp_path / "again.json"
    assert main(["plan", str(spec), "--cpus", "1", "--timings", str(out), "--json", str(again)]) == 0
    r1 = json.loads(again.read_text())
    assert r1["reused"] == 3 and [c["step_s"] for c in r1["trials"]] == [c["step_s"] for c in r["trials"]]
    assert r1["makespan_s"] == pytest.approx(sum(c["seconds"] for c in r["trials"]))


@pytest.mark.parametrize("args, field", [(["--cpus", "0"], "--cpus"), (["--cpus", "3", "--nodes", "2"], "--cpus"),
                                         (["--timings", "nowhere.json"], "--timings"),
                                         (["--startup", "-1"], "--startup")])
def test_bad_values_are_refused_in_one_line(tmp_path, capsys, args, field):
    spec = tmp_path / "p.yaml"
    spec.write_text(SPEC)
    assert main(["plan", str(spec), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}: "), err
