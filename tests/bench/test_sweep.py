"""A real Ray Tune sweep: phases, baseline reuse, skip-on-rerun, the folder lock and format."""
from __future__ import annotations

import json

import pytest

from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.results.store import Store, StoreError
from rankbench.bench.running.sweep import run_sweep

SPEC = """
sweep: s
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 1, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 3}
methods:
  - {name: svd, scheme: channel, rule: "speedup:2.0", finetune_epochs: [0, 1]}
"""


def _files(store: Store) -> dict[str, int]:
    return {str(p.relative_to(store.dir)): p.stat().st_mtime_ns
            for p in store.dir.rglob("*") if p.is_file() and "ray" not in p.parts and p.name != ".lock"}


def test_sweep_trains_the_baseline_once_and_a_rerun_runs_nothing(tmp_path, ray_session):
    sweep = parse_spec(SPEC)
    dense = [t for t in sweep.trials if t.method == "dense"]
    svd = [t for t in sweep.trials if t.method == "svd"]
    assert len(dense) == 1 and len(svd) == 2         # the baseline is implied by svd
    lines: list[str] = []
    s = run_sweep(sweep, tmp_path, out=lines.append)
    assert s.failed == {} and s.ran == 3 and s.skipped == 0
    store = Store(tmp_path, "s")
    rows = {t.id: store.read_result(t.id) for t in sweep.trials}
    assert all(r["status"] == "ok" for r in rows.values())
    # baseline reuse, from the files: only the dense trial ever ran a training epoch, and both
    # svd trials name it as their baseline
    trained = [t.id for t in sweep.trials if "[train] epoch" in store.log_path(t.id).read_text()]
    assert trained == [dense[0].id]
    assert {rows[t.id]["baseline_id"] for t in svd} == {dense[0].id}
    assert store.baseline_weights(dense[0].id).exists()
    # progress lines: counts and an ETA, one per change, ending with everything done
    assert any("ETA" in ln for ln in lines) and "done 3 running 0 failed 0" in lines[-1]
    csv = store.csv_path.read_text().splitlines()
    assert len(csv) == 1 + 3 and "macs_speedup" in csv[0] and "params.scheme" in csv[0]
    import pandas as pd

    df = pd.read_csv(store.csv_path)
    layers = [json.loads(v) for v in df["layers"]]        # lists are JSON text, readable back
    assert any(layer.get("rank") for ls in layers for layer in ls)

    before = _files(store)
    lines.clear()
    again = run_sweep(sweep, tmp_path, out=lines.append)
    assert again.ran == 0 and again.skipped == 3 and again.failed == {}
    assert "3 already done, 0 to run" in lines[0]
    after = _files(store)
    # nothing was re-run or re-written (only the CSV is regenerated)
    assert {k: v for k, v in after.items() if k != "results.csv"} == \
        {k: v for k, v in before.items() if k != "results.csv"}


def test_a_second_sweep_on_a_locked_folder_is_refused(tmp_path):
    sweep = parse_spec(SPEC)
    store = Store(tmp_path, "s")
    store.ensure()
    with store.lock():
        with pytest.raises(StoreError, match="in use by another sweep"):
            run_sweep(sweep, tmp_path, out=lambda s: None)


def test_a_folder_from_an_incompatible_version_is_refused(tmp_path):
    store = Store(tmp_path, "s")
    store.dir.mkdir(parents=True)
    store.format_path.write_text(json.dumps({"format": 999}))
    with pytest.raises(StoreError) as ei:
        run_sweep(parse_spec(SPEC), tmp_path, out=lambda s: None)
    assert "format 999" in str(ei.value) and "accepted: format 1" in str(ei.value)


def test_a_diverging_baseline_fails_its_methods_without_running_them(tmp_path, ray_session):
    # lr 1e6 really diverges (NaN loss in epoch 1): a fault from the training itself, no mock
    sweep = parse_spec(SPEC.replace("lr: 0.05", "lr: 1.0e+6"))
    lines: list[str] = []
    s = run_sweep(sweep, tmp_path, out=lines.append)
    assert len(s.failed) == 3 and s.ran == 3
    store = Store(tmp_path, "s")
    dense = next(t for t in sweep.trials if t.method == "dense")
    d = store.read_result(dense.id)
    assert d["error"].startswith("TrainingDiverged:") and "epoch 1" in d["error"]
    assert d["last_good_epoch"] is None
    for t in sweep.trials:
        if t.method == "svd":
            r = store.read_result(t.id)
            assert r["status"] == "failed" and r["error"].startswith(f"BaselineFailed: baseline {dense.id}")
            assert "TrainingDiverged" in r["error"]
            assert not store.log_path(t.id).exists()       # never started: no worker spent on it
    assert "failed 3" in lines[-1]
