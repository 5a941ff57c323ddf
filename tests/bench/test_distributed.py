"""Data-parallel trials: a 2-worker DDP trial through Ray Train inside the Tune sweep, TRP under
DDP equal to TRP in one process on the same global batch, and a preempted DDP run resumed from
its epoch checkpoint equal to an uninterrupted one."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from rankbench.bench.spec.parse import SpecError, parse_spec
from rankbench.bench.results.store import Store
from rankbench.bench.running.sweep import run_sweep

DDP_SPEC = """
sweep: ddp
seeds: [0]
data: {name: synthetic, shape: [3, 16, 16], size: 256, num_classes: 4}
model: cnn
train: {epochs: 2, batch_size: 32, lr: 0.05}
resources: {cpus: 2, workers: 2}
measure: {latency_repeats: 3}
methods:
  - {name: trp, scheme: channel, nuclear: 3.0e-4, export: "speedup:1.5"}
"""


def test_two_worker_ddp_trial_ends_with_identical_weights_and_one_row(tmp_path, ray_session):
    sweep = parse_spec(DDP_SPEC)
    (trial,) = sweep.trials
    assert trial.resources_cfg["workers"] == 2
    lines: list[str] = []
    summary = run_sweep(sweep, tmp_path, out=lines.append)
    assert summary.failed == {}, summary.failed
    row = Store(tmp_path, "ddp").read_result(trial.id)
    assert row["status"] == "ok" and row["top1"] is not None and row["macs_speedup"] > 1.4
    # the checksums every rank computed after training, gathered: bit-identical weights
    ddp = row["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    assert len(ddp["weights_sha256"]) == 2 and len(set(ddp["weights_sha256"])) == 1
    # rank 0 alone wrote: one log with one start line and both epochs, each epoch once
    log = Store(tmp_path, "ddp").log_path(trial.id).read_text()
    assert log.count(f"trial {trial.id}: trp") == 1
    assert log.count("[train] epoch 1/2") == 1 and log.count("[train] epoch 2/2") == 1
    assert [h["epoch"] for h in row["history"]] == [1, 2]


def test_distributed_spec_fields_are_checked_before_anything_runs():
    base = "sweep: x\nmethods: [dense]\ndata: {name: synthetic}\n"
    with pytest.raises(SpecError, match=r"^resources.workers: 0; accepted: an integer >= 1$"):
        parse_spec(base + "resources: {workers: 0}")
    with pytest.raises(SpecError, match=r"^train.batch_size: 30; accepted: a multiple of resources.workers \(4\)"):
        parse_spec(base + "resources: {workers: 4}\ntrain: {batch_size: 30}")
    with pytest.raises(SpecError, match=r"^train.sync_bn: True; accepted: false on CPU"):
        parse_spec(base + "train: {sync_bn: true}")
    with pytest.raises(SpecError, match=r"^train.sync_bn: 'yes'; accepted: true or false$"):
        parse_spec(base + "train: {sync_bn: 'yes'}")
    for gpus in (3, 1, 4, 0.5):        # one GPU per data-parallel worker, or none
        with pytest.raises(SpecError, match=rf"^resources.gpus: {gpus}; accepted: 0 \(CPU workers\) or 2, one GPU"):
            parse_spec(base + f"resources: {{gpus: {gpus}, workers: 2}}\ntrain: {{batch_size: 64}}", check=False)
    (t,) = parse_spec(base + "resources: {gpus: 2, workers: 2}", check=False).trials
    assert t.resources_cfg["gpus"] == 2.0 and t.resources_cfg["workers"] == 2
    # gpus: 8 alone is 8 workers with one GPU each
    (t,) = parse_spec(base + "resources: {gpus: 8}\ntrain: {batch_size: 256}", check=False).trials
    assert t.resources_cfg["workers"] == 8
    # sync_bn false (the default) leaves the trial id as it was before the field existed
    plain = parse_spec(base).trials[0]
    assert "sync_bn" not in plain.train_cfg
    assert parse_spec(base + "train: {sync_bn: false}").trials[0].id == plain.id
    assert parse_spec(base + "train: {sync_bn: true}\nresources: {gpus: 1}", check=False).trials[0].id != plain.id


# --- TRP under DDP == TRP in one process ------------------------------------------------------

DATA = {"name": "synthetic", "shape": [3, 8, 8], "size": 96, "num_classes": 4}
GLOBAL_BATCH = 16
EPOCHS = 2      # 96 // 16 = 6 steps per epoch: 12 TRP projections and sub-gradient steps
# DDP and one process are compared in float64, where they must agree to rounding: in float32 the
# all-reduced mean of two half-batch gradients rounds differently from the full batch's, and 12
# steps of SGD and the energy rule's rank threshold amplify that by an amount that depends on
# the CPU. Relative per tensor (Frobenius).
REL_TOL = 1e-9


def _model() -> nn.Module:
    # no batch norm: per-rank BN statistics (without SyncBatchNorm, which is GPU-only) would
    # legitimately differ from the single-process ones; everything else must match
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).double()


class _Float64:
    """A loader's batches with float64 inputs, for the float64 model."""

    def __init__(self, loader):   # noqa: ANN001
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __iter__(self):   # noqa: ANN204
        return ((x.double(), y) for x, y in self.loader)


def _in_float64(data):   # noqa: ANN001, ANN202
    import dataclasses

    return dataclasses.replace(data, train=_Float64(data.train), val=_Float64(data.val))


class _Preempted(Exception):
    pass


class _StopAt:
    """The train loader, cut off (as by a preemption) when epoch ``stop`` would begin."""

    def __init__(self, loader, stop: int):   # noqa: ANN001
        self.loader, self.stop, self.epoch = loader, stop, 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self):   # noqa: ANN204
        if self.epoch >= self.stop:
            raise _Preempted
        return iter(self.loader)


def _train_trp(rank: int, world: int, checkpoint: Path | None = None, stop_at: int | None = None,
               log=lambda s: None) -> tuple[nn.Module, object]:   # noqa: ANN001
    import dataclasses

    from rankbench.bench.data import build_data
    from rankbench.bench.train.ddp import current, wrap
    from rankbench.bench.train.config import TrainConfig
    from rankbench.bench.train.loop import Loop, train
    from rankbench.methods.api.base import Context
    from rankbench.methods.trp import TRP

    torch.set_num_threads(1)
    data = _in_float64(build_data(DATA, 0, GLOBAL_BATCH // world, augment=True, device="cpu", rank=rank,
                                  world_size=world))
    if stop_at is not None:
        data = dataclasses.replace(data, train=_StopAt(data.train, stop_at))
    model, forward = wrap(_model(), current())
    method = TRP(scheme="channel", energy=0.8, nuclear=1e-2, export="speedup:1.5")
    method.ctx = Context(input_shape=data.input_shape, num_classes=4, steps_per_epoch=data.steps_per_epoch,
                         epochs=EPOCHS)
    method.attach(model, method.ctx)
    train(model, data, TrainConfig(epochs=EPOCHS, lr=0.1, momentum=0.9, weight_decay=1e-4), method=method,
          loop=Loop(forward=forward, log=log, checkpoint=checkpoint))
    return model, method


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    from rankbench.bench.train.ddp import gather_checksums

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                          world_size=world)
    try:
        model, _ = _train_trp(rank, world)
        sums = gather_checksums(model)
        # preempted after epoch 1 (rank 0 wrote the checkpoint), then resumed by every rank
        ck = Path(out).with_name("epoch.pt")
        try:
            _train_trp(rank, world, checkpoint=ck, stop_at=1)
        except _Preempted:
            pass
        # a preempted group restarts together, once rank 0's checkpoint is on disk (without this
        # barrier rank 1 could look for it before rank 0 has written it)
        torch.distributed.barrier()
        lines: list[str] = []
        resumed, _ = _train_trp(rank, world, checkpoint=ck, log=lines.append)
        if rank == 0:
            torch.save({"state": model.state_dict(), "checksums": sums, "resumed": resumed.state_dict(),
                        "resumed_checksums": gather_checksums(resumed), "log": lines}, out)
        else:
            gather_checksums(resumed)
        torch.distributed.barrier()      # rank 0's file is written before any rank leaves
    finally:
        torch.distributed.destroy_process_group()
    # Leave without the interpreter's teardown: in this spawned helper, libtorch's C++ state
    # destroyed at exit sometimes aborts ("terminate called without an active exception") after
    # all work is done, which spawn reports as a failed rank. The result is already on disk.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trp_under_ddp_equals_trp_in_one_process_on_the_same_global_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)
    assert len(ddp["checksums"]) == 2 and ddp["checksums"][0] == ddp["checksums"][1]
    # a preempted DDP run resumed from rank 0's epoch checkpoint ends bit-identical to the
    # uninterrupted one, on both ranks
    assert any("resumed from epoch 1/2" in line for line in ddp["log"]), ddp["log"]
    assert ddp["resumed_checksums"] == ddp["checksums"]

    single, method = _train_trp(0, 1)
    assert method.names, "TRP picked no layer: the test would not exercise the projection"
    assert method.report().info["warm_start"]["warm"] > 0      # the default solver's warm path ran
    for k, v in single.state_dict().items():
        got = ddp["state"][k]
        assert got.dtype == v.dtype == torch.float64, k
        # gradients averaged over ranks vs over the batch, the same solver path: float64
        # rounding only (measured: at most 4e-14)
        assert float((got - v).norm()) <= REL_TOL * float(v.norm()), (k, float((got - v).norm() / v.norm()))

    # the comparison can fail: training on one rank's half of each batch alone lands elsewhere
    from rankbench.bench.data import build_data

    half = _in_float64(build_data(DATA, 0, GLOBAL_BATCH // 2, augment=True, device="cpu", rank=0, world_size=2))
    assert half.steps_per_epoch == 6
    from rankbench.bench.train.config import TrainConfig
    from rankbench.bench.train.loop import Loop, train
    from rankbench.methods.api.base import Context
    from rankbench.methods.trp import TRP

    alone = _model()
    m = TRP(scheme="channel", energy=0.8, nuclear=1e-2, export="speedup:1.5")
    m.ctx = Context(input_shape=half.input_shape, num_classes=4, steps_per_epoch=6, epochs=EPOCHS)
    m.attach(alone, m.ctx)
    train(alone, half, TrainConfig(epochs=EPOCHS, lr=0.1, momentum=0.9, weight_decay=1e-4), method=m,
          loop=Loop(log=lambda s: None))
    diff = max((alone.state_dict()[k] - v).abs().max().item() for k, v in single.state_dict().items())
    assert diff > 1e-3


# --- sync_bn: the spec key reaches the model ----------------------------------------------------

def test_sync_bn_converts_every_batch_norm_and_keeps_layer_names_and_state_keys(monkeypatch):
    # SyncBatchNorm trains on GPUs only (DDP refuses it on CPU modules, and the spec refuses
    # sync_bn with gpus: 0); what can be checked on a CPU: wrap() converts when asked, and the
    # method's layer choice, the checkpoint keys and the eval forward are unchanged by it
    import copy

    from rankbench.bench.train.ddp import DistContext, wrap
    from rankbench.bench.models.builtin import build_model
    from rankbench.methods.lowrank import select_layers

    torch.manual_seed(0)
    plain = build_model("resnet20", 4, (3, 8, 8)).eval()
    for m in plain.modules():                           # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    wrapped: list[nn.Module] = []

    class FakeDDP(nn.Module):                           # stands in for DDP: records what it wraps
        def __init__(self, module: nn.Module, device_ids=None):   # noqa: ANN001
            super().__init__()
            wrapped.append(module)
            self.module = module

    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", FakeDDP)
    ctx = DistContext(rank=0, world_size=2)
    model, ddp = wrap(copy.deepcopy(plain), ctx, sync_bn=True)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert n_bn > 0 and sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    assert ddp.module is model and wrapped == [model]     # DDP wraps the converted model
    assert select_layers(model) == select_layers(plain)     # TRP picks the same layers
    assert list(model.state_dict()) == list(plain.state_dict())
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain(x))   # eval: running statistics, no collective
    unsynced, _ = wrap(copy.deepcopy(plain), ctx, sync_bn=False)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in unsynced.modules())
    single, fwd = wrap(copy.deepcopy(plain), None, sync_bn=True)    # one process: nothing to sync
    assert single is fwd and not any(isinstance(m, nn.SyncBatchNorm) for m in single.modules())
