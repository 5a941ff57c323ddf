"""Experiment tracking: every trial's epochs reach TensorBoard, and MLflow when asked."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from rankbench.bench.cli import main
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.running.tracking import open_tracker, tensorboard_dir

SPEC = """
sweep: tb
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 2, batch_size: 128, lr: 0.05}
measure: {latency_repeats: 2}
methods:
  - {name: svd, scheme: channel, rule: "speedup:2.0", finetune_epochs: 1}
  - {name: trp, scheme: channel, export: "speedup:2.0"}
"""


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_rankbench_run_writes_each_trials_epoch_scalars_to_tensorboard(tmp_path, ray_session):
    spec = tmp_path / "tb.yaml"
    spec.write_text(SPEC)
    res = tmp_path / "results"
    assert main(["run", str(spec), "--results", str(res)]) == 0
    trials = {t.method: t for t in parse_spec(SPEC, check=False).trials}
    assert set(trials) == {"dense", "svd", "trp"}
    seen = {m: _scalars(tensorboard_dir(res / "tb", t.id)) for m, t in trials.items()}

    # trained from scratch: two epochs of loss, val top-1 and lr, and the row's final numbers
    for m in ("dense", "trp"):
        s = seen[m]
        for tag in ("train/loss", "train/val_top1", "train/lr"):
            assert [step for step, _ in s[tag]] == [1, 2], (m, tag)
        assert all(v > 0 for _, v in s["train/loss"])
        assert all(0 <= v <= 100 for _, v in s["train/val_top1"])
        # cosine schedule: the second epoch starts at a lower lr than the first
        assert s["train/lr"][0][1] == pytest.approx(0.05) and s["train/lr"][1][1] < 0.05
        assert [step for step, _ in s["final/top1"]] == [2]
    # TRP also reports the rank its energy rule keeps, per epoch, within the layers' full rank
    kept = seen["trp"]["train/mean_kept_rank"]
    frac = seen["trp"]["train/mean_kept_rank_fraction"]
    assert [step for step, _ in kept] == [1, 2] and all(v >= 1 for _, v in kept)
    assert all(0 < v <= 1 for _, v in frac)
    assert "train/mean_kept_rank" not in seen["dense"]
    # svd starts from the baseline: only its fine-tuning epoch, under its own phase
    assert [step for step, _ in seen["svd"]["finetune/loss"]] == [1]
    assert not any(tag.startswith("train/") for tag in seen["svd"])
    assert "final/macs_speedup" in seen["svd"]


def test_mlflow_without_the_extra_is_refused_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    rc = main(["run", "--mlflow", "file:///tmp/mlruns", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == ("error: --mlflow: 'file:///tmp/mlruns': the mlflow package is not installed; "
                   "accepted: pip install 'rankbench[mlflow]'")
    assert not (tmp_path / "r").exists()


class _FakeClient:
    """Records what the tracker asks of ``mlflow.tracking.MlflowClient``."""

    calls: list[tuple] = []

    def __init__(self, tracking_uri: str):
        self.calls.append(("uri", tracking_uri))

    def get_experiment_by_name(self, name):
        return None

    def create_experiment(self, name):
        self.calls.append(("experiment", name))
        return "7"

    def create_run(self, exp_id, run_name, tags):
        self.calls.append(("run", exp_id, run_name, tags["rankbench.trial_id"]))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id="r1"))

    def log_param(self, run_id, k, v):
        self.calls.append(("param", k, v))

    def log_metric(self, run_id, k, v, step):
        self.calls.append(("metric", k, v, step))

    def set_terminated(self, run_id, status):
        self.calls.append(("end", status))


def test_mlflow_gets_one_run_per_trial_with_its_epochs_and_final_numbers(tmp_path, monkeypatch):
    mod = types.ModuleType("mlflow")
    sub = types.ModuleType("mlflow.tracking")
    sub.MlflowClient = _FakeClient
    mod.tracking = sub
    monkeypatch.setitem(sys.modules, "mlflow", mod)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", sub)
    _FakeClient.calls = []
    trial = parse_spec(SPEC, check=False).trials[-1]
    logs: list[str] = []
    tr = open_tracker(trial, tmp_path, logs.append, mlflow="http://mlflow:5000")
    tr.epoch({"phase": "train", "epoch": 1, "loss": 1.5, "val_top1": 40.0, "lr": 0.05, "mean_kept_rank": 3})
    tr.finish({"status": "ok", "top1": 90.0, "macs_speedup": 2.0, "wall_s": float("nan")})
    c = _FakeClient.calls
    assert c[0] == ("uri", "http://mlflow:5000") and ("experiment", "tb") in c
    assert ("run", "7", trial.label, trial.id) in c
    assert ("param", "method", "trp") in c and ("param", "seed", 0) in c
    assert ("metric", "train.loss", 1.5, 1) in c and ("metric", "train.mean_kept_rank", 3.0, 1) in c
    assert ("metric", "final.top1", 90.0, 1) in c
    assert not any(x[0] == "metric" and x[1] == "final.wall_s" for x in c)   # NaN is not sent
    assert c[-1] == ("end", "FINISHED") and logs == []


def test_a_tracker_that_fails_is_dropped_with_one_log_line_and_never_fails_the_trial(tmp_path):
    trial = parse_spec(SPEC, check=False).trials[0]
    logs: list[str] = []
    tr = open_tracker(trial, tmp_path, logs.append)

    class Broken:
        def epoch(self, record):
            raise OSError("disk full")

    tr.sinks["tensorboard"] = Broken()
    tr.epoch({"phase": "train", "epoch": 1, "loss": 1.0})
    tr.epoch({"phase": "train", "epoch": 2, "loss": 1.0})
    tr.finish({"status": "ok"})
    assert logs == ["tensorboard: stopped logging: OSError: disk full"]


@pytest.mark.skipif(__import__("importlib").util.find_spec("mlflow") is None, reason="the mlflow extra")
def test_mlflow_file_store_holds_the_trials_metrics(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 prefers a database; a folder will do here

    trial = parse_spec(SPEC, check=False).trials[-1]
    uri = (tmp_path / "mlruns").as_uri()
    tr = open_tracker(trial, tmp_path, print, mlflow=uri, tensorboard=False)
    tr.epoch({"phase": "train", "epoch": 1, "loss": 1.5, "val_top1": 40.0, "lr": 0.05})
    tr.finish({"status": "ok", "top1": 90.0})
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("tb").experiment_id])[0]
    assert run.data.metrics["train.loss"] == 1.5 and run.data.metrics["final.top1"] == 90.0
    assert run.data.tags["rankbench.trial_id"] == trial.id
