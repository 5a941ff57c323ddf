"""Experiment tracking: every trial's epochs, hyperparameters and spectra reach TensorBoard, and
MLflow when asked (a real local SQLite store: mlflow is in the test extra)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from rankbench.bench.cli import main
from rankbench.bench.models.builtin import build_model
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.running.tracking import (HPARAM_METRICS, open_mlflow, open_tracker, run_name, spectra,
                                              sweep_tracking, tensorboard_dir)
from rankbench.methods import lowrank as L

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
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason="the mlflow extra (in .[test])")


def _events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def _scalars(acc) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _values(start) -> dict:
    """A session start's hparams as Python values."""
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def _hparams(acc) -> dict[str, bytes]:
    """The HParams plugin's summaries of a run, by tag."""
    try:
        return acc.PluginTagToContent("hparams")
    except KeyError:
        return {}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made (MLflow's migrations take seconds: once)."""
    if not HAS_MLFLOW:
        pytest.skip("the mlflow extra (in .[test])")
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def _store(empty: Path, where: Path) -> str:
    """A copy of the empty store at ``where``: its sqlite URI."""
    shutil.copyfile(empty, where)
    return f"sqlite:///{where}"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_session, request):
    """One `rankbench run` of SPEC (dense, svd, trp; two epochs) with TensorBoard and (where the
    extra is installed) an MLflow SQLite store, run from a temporary folder (MLflow puts artifacts
    under ./mlruns there)."""
    tmp = tmp_path_factory.mktemp("tracking")
    spec = tmp / "tb.yaml"
    spec.write_text(SPEC)
    uri = _store(request.getfixturevalue("empty_store"), tmp / "mlflow.db") if HAS_MLFLOW else None
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        # relative, as a user types it: trials run in Ray's folders, yet log into ./mlflow.db here
        mlflow = ["--mlflow", "sqlite:///mlflow.db"] if uri else []
        assert main(["run", str(spec), "--results", str(tmp / "results"), *mlflow]) == 0
    trials = {t.method: t for t in parse_spec(SPEC, check=False).trials}
    assert set(trials) == {"dense", "svd", "trp"}
    return tmp / "results" / "tb", trials, uri


def test_rankbench_run_writes_each_trials_epochs_hparams_ranks_and_spectra_to_tensorboard(swept):
    from tensorboard.plugins.hparams import metadata

    sweep_dir, trials, _ = swept
    runs = {m: tensorboard_dir(sweep_dir, t) for m, t in trials.items()}
    # runs named <label>/<model>/<data>/seed<k>-<id>
    assert runs["trp"] == sweep_dir / "tensorboard" / "trp_export=speedup_2.0,scheme=channel" / "cnn" / "digits" \
        / f"seed0-{trials['trp'].id}"
    acc = {m: _events(d) for m, d in runs.items()}
    seen = {m: _scalars(a) for m, a in acc.items()}

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
    # TRP also reports the rank its energy rule keeps, per epoch: in all and per layer
    kept = seen["trp"]["train/mean_kept_rank"]
    assert [step for step, _ in kept] == [1, 2] and all(v >= 1 for _, v in kept)
    assert all(0 < v <= 1 for _, v in seen["trp"]["train/mean_kept_rank_fraction"])
    layer_ranks = {tag: v for tag, v in seen["trp"].items() if tag.startswith("train/rank/")}
    layers = dict(build_model("cnn", 10, (1, 8, 8)).named_modules())
    assert layer_ranks and all(tag[len("train/rank/"):] in layers for tag in layer_ranks)
    assert all([step for step, _ in v] == [1, 2] and all(r >= 1 for _, r in v) for v in layer_ranks.values())
    assert "train/mean_kept_rank" not in seen["dense"]
    # svd starts from the baseline: only its fine-tuning epoch, under its own phase
    assert [step for step, _ in seen["svd"]["finetune/loss"]] == [1]
    assert not any(tag.startswith("train/") for tag in seen["svd"])

    # the HParams plugin: each trial's session starts with its hyperparameters and ends with its status
    for m, a in acc.items():
        content = _hparams(a)
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        hp = _values(start)
        assert hp["method"] == m and hp["model"] == "cnn" and hp["data.name"] == "digits"
        assert hp["train.lr"] == 0.05 and hp["train.epochs"] == 2 and "seed" in start.hparams
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == 1   # STATUS_SUCCESS
    svd = _values(metadata.parse_session_start_info_plugin_data(_hparams(acc["svd"])[metadata.SESSION_START_INFO_TAG]))
    assert {k: v for k, v in svd.items() if k.startswith("params.")} == \
        {"params.scheme": "channel", "params.rule": "speedup:2.0", "params.finetune_epochs": 1}
    # the sweep's experiment at the root: every trial's hparams, the four final metrics
    exp = metadata.parse_experiment_plugin_data(_hparams(_events(sweep_dir / "tensorboard"))[metadata.EXPERIMENT_TAG])
    assert {"label", "method", "params.rule", "params.export", "seed", "train.lr"} <= {h.name for h in exp.hparam_infos}
    assert [m.name.tag for m in exp.metric_infos] == list(HPARAM_METRICS)
    for m in HPARAM_METRICS:
        assert m in seen["trp"] and m in seen["svd"]
    # each factorized layer's singular values at export; the dense baseline has none
    hists = {m: [t for t in a.Tags()["histograms"] if t.startswith("spectrum/")] for m, a in acc.items()}
    assert hists["svd"] and hists["trp"] and not hists["dense"]
    h = acc["svd"].Histograms(hists["svd"][0])[0]
    assert h.step == 1 and h.histogram_value.num > 0 and h.histogram_value.min > 0


@needs_mlflow
def test_rankbench_run_logs_the_sweep_as_one_mlflow_parent_run_with_a_child_run_per_trial(swept):
    from mlflow.tracking import MlflowClient

    sweep_dir, trials, uri = swept
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tb")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("rankbench.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.run_name == "tb" and parents[0].info.status == "FINISHED"
    children = {r.data.tags["rankbench.trial_id"]: r for r in runs if r not in parents}
    assert set(children) == {t.id for t in trials.values()}
    for m, t in trials.items():
        run = children[t.id]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.run_name == run_name(t) and run.info.status == "FINISHED"
        # every flattened spec field is a param
        p = run.data.params
        assert p["method"] == m and p["seed"] == "0" and p["data.name"] == "digits"
        assert p["train.lr"] == "0.05" and p["train.epochs"] == "2" and p["measure.latency_repeats"] == "2"
        assert p["trial_id"] == t.id
        row = json.loads((sweep_dir / "trials" / f"{t.id}.json").read_text())
        assert run.data.metrics["final.top1"] == pytest.approx(row["top1"])
        # artifacts: the row, the spec, the log and the compressed model
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"row.json", "spec.json", f"{t.id}.log", row["compressed_model"]} <= arts, arts
        local = Path(client.download_artifacts(run.info.run_id, "row.json", str(sweep_dir.parent)))
        assert json.loads(local.read_text())["top1"] == row["top1"]
    trp = children[trials["trp"].id]
    assert trp.data.params["params.export"] == "speedup:2.0"
    hist = client.get_metric_history(trp.info.run_id, "train.loss")
    assert sorted(h.step for h in hist) == [1, 2]
    assert any(k.startswith("train.rank/") for k in trp.data.metrics)
    assert "spectra.json" in {a.path for a in client.list_artifacts(trp.info.run_id)}
    # svd fine-tuned: its epoch under finetune.*
    assert [h.step for h in client.get_metric_history(children[trials["svd"].id].info.run_id, "finetune.loss")] == [1]


@needs_mlflow
@pytest.mark.parametrize("uri, why", [
    ("file:{tmp}/mlruns", "MLFLOW_ALLOW_FILE_STORE"),     # MLflow 3 refuses a folder store unless told
    ("http://127.0.0.1:9", "MlflowException"),           # no server answers there
    ("nosuch://x", "nosuch"),
])
def test_a_bad_mlflow_uri_exits_2_with_one_line_before_anything_trains(tmp_path, monkeypatch, capsys, no_run,
                                                                       uri, why):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = uri.format(tmp=tmp_path)
    res = tmp_path / "r"
    assert main(["run", "quick", "train.epochs=1", "--results", str(res), "--mlflow", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --mlflow: '{uri}': the MLflow store refused it") and "\n" not in err
    assert why in err and "accepted: sqlite:///PATH.db" in err
    assert not res.exists()    # no results folder, no trial, no row


@needs_mlflow
def test_a_resumed_trial_goes_on_in_its_mlflow_run_and_a_second_sweep_run_reuses_the_parent(tmp_path,
                                                                                             monkeypatch, empty_store):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = _store(empty_store, tmp_path / "m.db")
    trials = parse_spec(SPEC, check=False).trials
    trial = trials[-1]
    target = open_mlflow(uri, "tb")
    with sweep_tracking(tmp_path, "tb", trials, 1, target, print) as first:
        tr = open_tracker(trial, tmp_path, print, mlflow=first, tensorboard=False)
        tr.epoch({"phase": "train", "epoch": 1, "loss": 1.5})
        # killed here: no finish; the sweep is run again and the trial resumes at epoch 2
    with sweep_tracking(tmp_path, "tb", trials, 1, target, print) as again:
        assert again.parent_run_id == first.parent_run_id
        tr = open_tracker(trial, tmp_path, print, mlflow=again, tensorboard=False)
        tr.epoch({"phase": "train", "epoch": 2, "loss": 1.0})
        tr.finish({"status": "failed", "error": "X"})
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([target.experiment_id], filter_string=f"tags.`rankbench.trial_id` = '{trial.id}'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert [h.step for h in client.get_metric_history(runs[0].info.run_id, "train.loss")] == [1, 2]


def test_mlflow_without_the_extra_is_refused_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    rc = main(["run", "--mlflow", "sqlite:///mlflow.db", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == ("error: --mlflow: 'sqlite:///mlflow.db': the mlflow package is not installed; "
                   "accepted: pip install 'rankbench[mlflow]'")
    assert not (tmp_path / "r").exists()


def test_spectra_are_the_singular_values_of_the_factor_product_in_every_scheme():
    torch.manual_seed(0)
    cases = [("linear", torch.nn.Linear(6, 5), 1), ("channel", torch.nn.Conv2d(4, 6, 3), 1),
             ("channel", torch.nn.Conv2d(4, 6, 3), 2), ("spatial", torch.nn.Conv2d(4, 6, (3, 2)), 1),
             ("decoupling", torch.nn.Conv2d(4, 6, 3), 1)]
    for scheme, layer, tiles in cases:
        layer = layer.double()
        want = torch.linalg.svdvals(L.to_matrix(layer.weight.detach(), scheme, tiles)).flatten()
        # at full rank the factors' product is the dense weight: the same spectrum
        full = L.factorize(layer, scheme, L.full_rank(layer, scheme, tiles), tiles)
        got = spectra(torch.nn.Sequential(torch.nn.Identity(), full))["1"]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=f"{scheme} tiles={tiles}")
        # at rank 2: the two largest of each matrix, the rest (numerically) zero
        low = spectra(torch.nn.Sequential(L.factorize(layer, scheme, 2, tiles)))["0"]
        n_mats = max(1, want.numel() // L.full_rank(layer, scheme, tiles))
        top = want.reshape(n_mats, -1)[:, :2]
        torch.testing.assert_close(low.reshape(n_mats, -1)[:, :2], top, rtol=0, atol=1e-10)
        assert low.reshape(n_mats, -1)[:, 2:].abs().max().item() < 1e-10


def test_trp_reports_each_layers_kept_rank():
    from rankbench.methods.api.base import Context
    from rankbench.methods.trp import TRP

    torch.manual_seed(0)
    model = build_model("cnn", 10, (1, 8, 8))
    trp = TRP(scheme="channel", energy=0.9)
    trp.ctx = Context(input_shape=(1, 8, 8), num_classes=10, steps_per_epoch=1, epochs=1)
    trp.attach(model, trp.ctx)
    with torch.no_grad():   # every chosen layer rank 1 but the first, rank 2
        for i, n in enumerate(trp.names):
            w = model.get_submodule(n).weight
            k = 2 if i == 0 else 1
            w.copy_((torch.randn(w.shape[0], k) @ torch.randn(k, w[0].numel())).reshape(w.shape))
    out = trp.epoch_metrics(model)
    assert {k: v for k, v in out.items() if k.startswith("rank/")} == \
        {f"rank/{n}": (2.0 if i == 0 else 1.0) for i, n in enumerate(trp.names)}


def test_run_names_are_safe_folder_names():
    t = parse_spec(SPEC, check=False).trials[-1]
    named = dataclasses.replace(t, model="timm:deit_tiny_patch16_224", display_label="TRP+Nu (ours)")
    assert run_name(named) == f"TRP+Nu_ours/timm_deit_tiny_patch16_224/digits/seed0-{named.id}"


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


@needs_mlflow
def test_mlflow_file_store_holds_the_trials_metrics_when_allowed(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 prefers a database; a folder when told
    trial = parse_spec(SPEC, check=False).trials[-1]
    uri = (tmp_path / "mlruns").as_uri()
    tr = open_tracker(trial, tmp_path, print, mlflow=uri, tensorboard=False)   # a URI alone: no parent
    tr.epoch({"phase": "train", "epoch": 1, "loss": 1.5, "val_top1": 40.0, "lr": 0.05})
    tr.finish({"status": "ok", "top1": 90.0, "wall_s": float("nan")})
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("tb").experiment_id])[0]
    assert run.data.metrics["train.loss"] == 1.5 and run.data.metrics["final.top1"] == 90.0
    assert "final.wall_s" not in run.data.metrics   # NaN is not sent
    assert run.data.tags["rankbench.trial_id"] == trial.id and "mlflow.parentRunId" not in run.data.tags
