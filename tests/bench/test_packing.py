"""Packed trials (fractional GPUs) are checked for memory before they start."""
from __future__ import annotations

import pytest
import torch

from rankbench.bench.preflight import memory as packing
from rankbench.bench.models.builtin import build_model
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.results.store import Store
from rankbench.bench.running.sweep import run_sweep

GIB = 2**30

SPEC = """
sweep: packed
seeds: [0]
data: {name: digits}
model: [cnn, mlp]
train: {epochs: 1, batch_size: 64, lr: 0.05}
resources: {cpus: 1, gpus: 0.25}
methods:
  - {name: dense}
  - {name: svd, scheme: channel, rule: "rank:2", model: cnn}
"""


def test_share_math():
    assert packing.share_fits(17 * GIB, 0.25, 80 * GIB)            # 17 <= 0.85 * 20
    assert not packing.share_fits(18 * GIB, 0.25, 80 * GIB)
    assert packing.gpus_needed(18 * GIB, 80 * GIB) == 0.3            # 18 / 68 = 0.265 -> 0.3
    assert packing.gpus_needed(500 * GIB, 80 * GIB) == 1.0
    assert packing.is_packed({"gpus": 0.5}) and not packing.is_packed({"gpus": 1})
    assert not packing.is_packed({"gpus": 0}) and not packing.is_packed({"gpus": 0.5, "workers": 2})


def test_one_probe_per_model_and_refusals_name_the_numbers():
    trials = parse_spec(SPEC).trials
    probed = []

    def probe(t):
        probed.append(t.model)
        return (30 * GIB if t.model == "cnn" else GIB), 80 * GIB

    refused = packing.check_packing(trials, probe=probe, log=lambda s: None)
    assert sorted(probed) == ["cnn", "mlp"]                          # the cnn dense and svd share a probe
    assert {t.id for t in trials if t.model == "cnn"} == set(refused)
    why = next(iter(refused.values()))
    assert why.startswith("GPUMemory: one training step needs 30.00 GiB; its share resources.gpus=0.25")
    assert "accepted: resources.gpus >= 0.45" in why


def test_a_sweep_fails_trials_that_would_not_fit_before_running_anything(tmp_path, monkeypatch):
    # every trial refused: nothing needs a GPU, so this runs on CPU and Ray never schedules a trial
    monkeypatch.setattr(packing, "ray_probe", lambda t: (80 * GIB, 80 * GIB))
    # a GPU machine as far as the capacity check goes (rankbench.bench.preflight.capacity refuses gpus on this one)
    monkeypatch.setattr("rankbench.bench.preflight.capacity.local_nodes", lambda: [{"CPU": 2.0, "GPU": 1.0}])
    monkeypatch.setattr("rankbench.bench.preflight.capacity.check_cluster", lambda *a, **kw: None)
    sweep = parse_spec(SPEC)
    lines = []
    summary = run_sweep(sweep, tmp_path, out=lines.append)
    store = Store(tmp_path, "packed")
    rows = [store.read_result(t.id) for t in sweep.trials]
    assert all(r["status"] == "failed" and r["error"].startswith("GPUMemory:") for r in rows)
    assert set(summary.failed) == {t.id for t in sweep.trials}
    assert any(line.startswith("packing: cnn batch 64 needs 80.00 GiB") for line in lines)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures CUDA memory")
def test_peak_step_memory_on_a_gpu():
    data = {"name": "synthetic", "shape": [3, 32, 32], "num_classes": 10}
    peak, total = packing.peak_step_memory("resnet20", {}, data, 128, True, True)
    assert total == torch.cuda.get_device_properties(0).total_memory
    # at least weights, gradients and momentum (float32) and the float32 input batch; a ResNet-20
    # step at batch 128 saves about 100 MiB of bf16 activations, far below 2 GiB on any GPU
    params = sum(p.numel() for p in build_model("resnet20", 10, (3, 32, 32)).parameters())
    batch_bytes = 4 * 128 * 3 * 32 * 32
    assert 3 * 4 * params + batch_bytes < peak < 2 * 2**30, peak
    # four times the batch holds at least three more input batches (and their activations)
    big, _ = packing.peak_step_memory("resnet20", {}, data, 512, True, True)
    assert big - peak > 3 * batch_bytes, (peak, big)
