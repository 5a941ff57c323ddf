"""The sweep's queue (``rankbench.bench.running.queue.TrialQueue``) and the capacity check (``rankbench.bench.preflight.capacity``), on
their own: which trial starts when, and which resources are refused, without Ray."""
from __future__ import annotations

import pytest

from rankbench.bench.preflight import capacity
from rankbench.bench.checks import UserError
from rankbench.bench.running.queue import TrialQueue
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.results.store import Store

SPEC = """
sweep: q
seeds: [0, 1]
data: {name: digits}
model: cnn
methods:
  - {name: svd, rule: "energy:0.9"}
  - {name: trp}
"""


def _queue(tmp_path, trials=None):
    sweep = parse_spec(SPEC, check=False)
    trials = list(sweep.trials) if trials is None else trials
    failed: list[str] = []
    q = TrialQueue(trials, Store(tmp_path, "q"), lambda t, row: failed.append(t.id))
    return sweep, q, failed


def test_from_scratch_trials_start_while_baselines_train_and_each_svd_waits_for_its_own(tmp_path):
    sweep, q, failed = _queue(tmp_path)
    by = {t.id: t for t in sweep.trials}
    got = [q.suggest(f"tune{i}") for i in range(4)]
    methods = [by_id["trial"]["method"] for by_id in got]
    # both baselines first, then the TRP trials (from scratch): the SVD trials are not ready
    assert methods == ["dense", "dense", "trp", "trp"]
    assert q.suggest("tune4") is None                       # both SVD trials wait
    # baseline of seed 1 finishes (its weights saved): only its own SVD trial becomes ready
    b1 = next(t for t in sweep.trials if t.method == "dense" and t.seed == 1)
    w = Store(tmp_path, "q").baseline_weights(b1.id)
    w.parent.mkdir(parents=True)
    w.write_bytes(b"w")
    tune_id = next(k for k, v in q.running.items() if v == b1.id)
    q.on_trial_complete(tune_id)
    nxt = q.suggest("tune5")
    assert nxt["trial"]["method"] == "svd" and nxt["trial"]["seed"] == 1
    assert q.suggest("tune6") is None                       # seed 0's baseline still trains
    # seed 0's baseline ends without weights (it failed): its SVD trial is failed, not started
    b0 = next(t for t in sweep.trials if t.method == "dense" and t.seed == 0)
    q.on_trial_complete(next(k for k, v in q.running.items() if v == b0.id))
    assert q.suggest("tune7") == "FINISHED"
    s0 = next(t for t in sweep.trials if t.method == "svd" and t.seed == 0)
    assert failed == [s0.id]
    row = Store(tmp_path, "q").read_result(s0.id)
    assert row["status"] == "failed" and row["error"].startswith(f"BaselineFailed: baseline {b0.id}")


def test_a_trial_whose_baseline_finished_in_an_earlier_run_starts_at_once(tmp_path):
    sweep = parse_spec(SPEC, check=False)
    svd = [t for t in sweep.trials if t.method == "svd"]
    store = Store(tmp_path, "q")
    for t in svd:
        w = store.baseline_weights(t.baseline().id)
        w.parent.mkdir(parents=True)
        w.write_bytes(b"w")
    _, q, failed = _queue(tmp_path, svd)
    assert [q.suggest(str(i))["trial"]["method"] for i in range(2)] == ["svd", "svd"]
    assert q.suggest("x") == "FINISHED" and failed == []


def _res(**r):
    return {"cpus": 1.0, "gpus": 0.0, "workers": 1, **r}


@pytest.mark.parametrize("r, nodes, ok", [
    (_res(cpus=2), [{"CPU": 2}], True),
    (_res(cpus=3), [{"CPU": 2}, {"CPU": 2}], False),              # one process: one node must hold it
    (_res(gpus=1), [{"CPU": 16, "GPU": 0}], False),
    (_res(gpus=0.5), [{"CPU": 1, "GPU": 1}], True),
    (_res(cpus=4, workers=2), [{"CPU": 2}], False),                # 2 workers of 2 CPUs on 2 cores
    (_res(cpus=4, workers=2), [{"CPU": 2}, {"CPU": 2}], True),     # one worker per node
    (_res(cpus=8, gpus=8, workers=8), [{"CPU": 4, "GPU": 4}, {"CPU": 4, "GPU": 4}], True),
    (_res(cpus=8, gpus=8, workers=8), [{"CPU": 4, "GPU": 4}, {"CPU": 3, "GPU": 4}], False),
])
def test_fits_places_a_trial_on_one_node_or_its_workers_across_nodes(r, nodes, ok):
    assert capacity.fits(r, nodes) is ok


class _T:
    def __init__(self, r):
        self.resources_cfg = r


def test_on_a_cluster_the_driver_waits_for_nodes_then_refuses(capsys):
    lines: list[str] = []
    clock = iter([[{"CPU": 2}], [{"CPU": 2}], [{"CPU": 2}, {"CPU": 8, "GPU": 1}]])
    capacity.check_cluster([_T(_res(gpus=1))], 60, lines.append, nodes=lambda: next(clock), sleep=lambda s: None)
    assert len(lines) == 1 and lines[0].startswith("pending: 1 CPU, 1 GPU in one process fits no node yet")
    with pytest.raises(UserError, match=r"resources: .*needs 1 CPU, 1 GPU in one process; the cluster \(after "
                                        r"waiting 0s for nodes to join\) has 1 node: 2 CPU, 0 GPU"):
        capacity.check_cluster([_T(_res(gpus=1))], 0, lines.append, nodes=lambda: [{"CPU": 2}])


def test_the_wait_is_settable_from_the_environment(monkeypatch):
    monkeypatch.setenv(capacity.WAIT_ENV, "12")
    assert capacity.wait_seconds() == 12 and capacity.wait_seconds(3) == 3
    monkeypatch.setenv(capacity.WAIT_ENV, "soon")
    with pytest.raises(UserError, match="RANKBENCH_WAIT_FOR_NODES: 'soon'"):
        capacity.wait_seconds()
    monkeypatch.delenv(capacity.WAIT_ENV)
    assert capacity.wait_seconds() == capacity.DEFAULT_WAIT_S
