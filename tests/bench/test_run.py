"""One trial end to end, without Ray: rows, baseline reuse, failures, determinism."""
from __future__ import annotations

import json

import pytest
import torch

import rankbench.bench
from rankbench.bench.results import row as result_row
from rankbench.bench.running.run import run_trial
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.results.store import Store
from rankbench.methods.api.base import Context, Method
from rankbench.methods.api.registry import register

SPEC = """
sweep: r
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 2, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 3}
methods:
  - {name: dense}
  - {name: svd, scheme: channel, rule: "speedup:2.0", finetune_epochs: 1}
"""



@register("test_diverge")
class Diverge(Method):
    """Test-only: poisons a weight in the second epoch, as a too-high learning rate would."""

    def __init__(self, at_epoch: int = 2):
        self.at_epoch = at_epoch

    def before_step(self, model, step):
        if step == (self.at_epoch - 1) * self.ctx.steps_per_epoch:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


@pytest.fixture(scope="module")
def trials():
    sweep = parse_spec(SPEC)
    dense = next(t for t in sweep.trials if t.method == "dense")
    svd = next(t for t in sweep.trials if t.method == "svd")
    return dense, svd


def test_method_before_its_baseline_fails_clearly_and_is_recorded(tmp_path, trials):
    _, svd = trials
    row = run_trial(svd, tmp_path)
    assert row["status"] == "failed"
    assert row["error"].startswith("BaselineMissing:") and svd.baseline().id in row["error"]
    on_disk = json.loads(Store(tmp_path, "r").trial_path(svd.id).read_text())
    assert on_disk["status"] == "failed" and on_disk["error"] == row["error"]


def test_dense_then_svd_from_the_saved_baseline(tmp_path, trials):
    dense, svd = trials
    store = Store(tmp_path, "r")
    d = run_trial(dense, tmp_path)
    assert d["status"] == "ok", d["error"]
    assert result_row.problems(d) == []
    assert store.baseline_weights(dense.id).exists()
    assert d["macs"] == d["dense_macs"] and d["macs_speedup"] == 1.0 and d["top1"] > 50
    assert d["env"]["rankbench"] == rankbench.bench.__version__ and d["env"]["torch"] == torch.__version__
    assert d["spec"] == dense.to_dict() and d["gpu_hours"] == 0.0 and d["wall_s"] > 0

    s = run_trial(svd, tmp_path)
    assert s["status"] == "ok", s["error"]
    assert s["baseline_id"] == dense.id
    # starts from the baseline: no training epochs of its own, only the one fine-tuning epoch
    assert [(h["phase"], h["epoch"]) for h in s["history"]] == [("finetune", 1)]
    assert s["dense_macs"] == d["macs"] and 1.8 < s["macs_speedup"] < 2.3
    assert s["params_count"] < s["dense_params_count"]
    assert s["variant"] == "finetune_epochs=1,rule=speedup:2.0,scheme=channel"
    assert s["scheme"] == "channel" and s["rule"] == "speedup:2.0"
    assert any(layer.get("rank") for layer in s["layers"])
    # latency: dense and compressed timed together on one menu, each on its fastest layout, named
    from rankbench.bench.measure.inference import CPU_LAYOUTS
    assert set(s["latency_layouts"]) == {"compressed", "dense"} and set(d["latency_layouts"]) == {"compressed"}
    for which, layout in (("compressed", s["latency_layout"]), ("dense", s["dense_latency_layout"])):
        timed = s["latency_layouts"][which]["ms"]
        assert set(timed) | set(s["latency_layouts"][which]["skipped"]) == set(CPU_LAYOUTS)
        assert layout in timed and s["latency_speedup"] == pytest.approx(s["dense_latency_ms"] / s["latency_ms"])
    assert s["latency_ms"] == s["latency_layouts"]["compressed"]["ms"][s["latency_layout"]]
    # the row on disk is the row returned, and the resume checkpoints are gone once it is written
    assert json.loads(store.trial_path(svd.id).read_text()) == s
    assert not store.epoch_checkpoint(dense.id).exists()


def test_nan_loss_gives_a_failed_row_with_last_good_epoch(tmp_path):
    sweep = parse_spec(SPEC.replace("{name: dense}", "{name: test_diverge}"))
    t = next(t for t in sweep.trials if t.method == "test_diverge")
    row = run_trial(t, tmp_path)
    assert row["status"] == "failed"
    assert row["error"].startswith("TrainingDiverged:") and "epoch 2" in row["error"]
    assert row["last_good_epoch"] == 1
    assert Store(tmp_path, "r").epoch_checkpoint(t.id).exists()      # kept for a retry


def test_same_trial_same_machine_same_row(tmp_path, trials):
    dense, _ = trials
    a = run_trial(dense, tmp_path / "a")
    b = run_trial(dense, tmp_path / "b")
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert (a["top1"], a["f1"], a["macs"]) == (b["top1"], b["f1"], b["macs"])


def test_model_options_from_the_spec_reach_the_builder(tmp_path):
    t = next(iter(parse_spec("sweep: r\nseeds: [0]\nmodel: {name: mlp, hidden: [32]}\n"
                             "train: {epochs: 1}\nmeasure: {latency_repeats: 2}\nmethods: [{name: dense}]\n").trials))
    row = run_trial(t, tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["params_count"] == 64 * 32 + 32 + 32 * 10 + 10      # digits 8x8 -> 32 -> 10
    assert row["spec"]["model_options"] == {"hidden": [32]}


@register("test_sees_context")
class SeesContext(Method):
    """Test-only: records what the harness hands over before attach (ctx, training batches)."""

    seen: dict = {}

    def attach(self, model, ctx):
        SeesContext.seen.update(ctx_set=self.ctx is ctx, batches=ctx.train_batches(2))

    def before_step(self, model, step):
        if step == 0:
            SeesContext.seen["first_step_ctx"] = self.ctx


def test_a_row_written_through_run_trial_matches_the_schema_and_collate_reads_the_same_keys(tmp_path):
    """The row schema in one place: rankbench.bench.results.row's FIELDS describe what run_trial writes, key for key
    and type for type, and rankbench.reports.collate's columns are those keys."""
    from rankbench.reports.collate import load_results

    sweep = parse_spec("sweep: schema\nseeds: [0]\nmodel: mlp\ntrain: {epochs: 1, batch_size: 128}\n"
                       "measure: {latency_repeats: 2}\nmethods: [dense, {name: svd, rule: 'rank:4', scheme: linear}]\n")
    rows = [run_trial(t, tmp_path) for t in sweep.trials]
    failed = result_row.failed_row(sweep.trials[0], "Boom: no")
    for row in rows + [failed]:
        assert result_row.problems(row) == [], row.get("error")
    on_disk = [json.loads(Store(tmp_path, "schema").trial_path(t.id).read_text()) for t in sweep.trials]
    for row in on_disk:
        assert row["status"] == "ok", row["error"]
        assert result_row.problems(row) == []
        # an ok row also names its compressed model, saved beside it, and the code that made it;
        # `node` where Ray runs the process (the test session's Ray is up in this one)
        optional = {"compressed_model", "code"} | ({"node", "baseline_node"} & set(row))
        assert set(row) == {f.key for f in result_row.FIELDS if f.always} | optional
        assert (Store(tmp_path, "schema").trials_dir / row["compressed_model"]).is_file()
    svd = on_disk[1]
    # scheme and rule come from the method's report(), its other facts ride along in method_info
    assert (svd["scheme"], svd["rule"]) == ("linear", "rank:4") and isinstance(svd["method_info"], dict)
    assert all(isinstance(L, dict) and L["scheme"] == "linear" for L in svd["layers"])
    df = load_results(tmp_path / "schema")
    assert list(df.columns[:len(result_row.KEYS)]) == list(result_row.KEYS)
    assert df.loc[df["method"] == "svd", "params.scheme"].tolist() == ["linear"]
    # results.csv flattens the same way (params.scheme, env.torch)
    header = Store(tmp_path, "schema").write_csv().read_text().splitlines()[0].split(",")
    assert {"params.scheme", "env.torch", "top1", "macs_speedup"} <= set(header)


def test_the_harness_sets_ctx_and_hands_over_unaugmented_training_batches_without_moving_the_epoch(tmp_path):
    t = next(iter(parse_spec("sweep: c\nseeds: [0]\nmodel: mlp\ntrain: {epochs: 1, batch_size: 32, augment: true}\n"
                             "measure: {latency_repeats: 2}\nmethods: [test_sees_context]\n").trials))
    row = run_trial(t, tmp_path)
    assert row["status"] == "ok", row["error"]
    seen = SeesContext.seen
    assert seen["ctx_set"] and isinstance(seen["first_step_ctx"], Context)
    assert len(seen["batches"]) == 2 and all(x.shape[0] == 32 and len(y) == 32 for x, y in seen["batches"])
    # the training loop still ran its epoch 1 as a trial without the method would: same loss
    plain = next(iter(parse_spec("sweep: c\nseeds: [0]\nmodel: mlp\ntrain: {epochs: 1, batch_size: 32, augment: true}\n"
                                 "measure: {latency_repeats: 2}\nmethods: [dense]\n").trials))
    assert run_trial(plain, tmp_path)["history"][0]["loss"] == row["history"][0]["loss"]


def test_the_contracts_table_lists_the_row_keys_in_order():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "CONTRACTS.md").read_text()
    section = text.split("## Result row", 1)[1].split("\n## ", 1)[0]
    keys = [ln.split("|")[1].strip() for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert keys[1:] == list(result_row.KEYS)      # keys[0] is the header
