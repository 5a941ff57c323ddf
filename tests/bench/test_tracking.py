"""Per-epoch scalars reach TensorBoard (one folder per sweep), read back with tensorboard's reader."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench.measure import device_name
from bench.run import run_trial
from bench.spec import parse_spec
from bench.tracking import TB_DIR

SPEC = """
sweep: tb
seeds: [0]
data: digits
model: cnn
train: {epochs: 2, batch_size: 64, lr: 0.05}
measure: {latency_repeats: 2}
methods:
  - {name: trp, scheme: channel, export: "speedup:1.5"}
  - {name: svd, scheme: channel, rule: "speedup:1.5", finetune_epochs: 1}
"""


def scalars(folder):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_every_epoch_writes_loss_val_top1_lr_and_trps_kept_rank(tmp_path):
    sweep = parse_spec(SPEC)
    rows = {t.method: run_trial(t, tmp_path) for t in sweep.trials}   # dense baseline first
    assert all(r["status"] == "ok" for r in rows.values()), [r.get("error") for r in rows.values()]
    folders = sorted(p.name for p in (tmp_path / "tb" / TB_DIR).iterdir())
    assert folders == sorted(t.id for t in sweep.trials)             # one run per trial, in the sweep's folder

    trp = scalars(tmp_path / "tb" / TB_DIR / rows["trp"]["trial_id"])
    assert {"loss", "val_top1", "lr", "trp/mean_kept_rank", "trp/kept_rank_fraction"} <= set(trp)
    assert [s for s, _ in trp["loss"]] == [1, 2]
    history = rows["trp"]["history"]
    assert [v for _, v in trp["val_top1"]] == pytest.approx([h["val_top1"] for h in history], abs=1e-4)
    assert [v for _, v in trp["loss"]] == pytest.approx([h["loss"] for h in history], rel=1e-6)
    assert trp["lr"][1][1] < trp["lr"][0][1] <= 0.05                  # cosine decay
    assert all(1 <= v <= 64 for _, v in trp["trp/mean_kept_rank"])
    assert all(0 < v <= 1 for _, v in trp["trp/kept_rank_fraction"])

    # a fine-tune continues the trial's epoch count: svd starts from the baseline, fine-tunes 1 epoch
    svd = scalars(tmp_path / "tb" / TB_DIR / rows["svd"]["trial_id"])
    assert [s for s, _ in svd["loss"]] == [1] and "trp/mean_kept_rank" not in svd


def test_the_latency_column_says_1_thread_not_1_threads():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert device_name("cpu").endswith(", 1 thread)")
    finally:
        torch.set_num_threads(n)
