"""A method's training hooks meeting diverged weights: training that blows up ends as
``TrainingDiverged`` naming the epoch (and phase), whatever the method, never as the error its
linear algebra raises on NaN/inf weights; a hook that fails on finite weights keeps its own error."""
from __future__ import annotations

import pathlib

import pytest
import torch

from rankbench.bench.data import build_data
from rankbench.bench.models.builtin import build_model
from rankbench.bench.running.run import run_trial
from rankbench.bench.spec.parse import parse_spec
from rankbench.bench.train.config import Phase, TrainConfig
from rankbench.bench.train.loop import Loop, Progress, TrainingDiverged, train
from rankbench.methods import lowrank
from rankbench.methods.api.base import Method

SPEC = """
sweep: diverge
seeds: [0]
data: {name: digits}
model: cnn
train: {epochs: 2, batch_size: 64, lr: 1.0e+6}
methods:
  - %s
"""


@pytest.mark.parametrize("entry", ["{name: trp}", "{name: trp, solver: svd}", "{name: trp, nuclear: 3.0e-4}",
                                   "{name: deeptwist, period: 2}"])
def test_a_method_with_hooks_at_lr_1e6_fails_as_training_diverged_in_its_epoch(entry, tmp_path: pathlib.Path):
    # lr 1e6 really diverges in epoch 1: no mock; the hook's eigensolver / SVD then meets NaN weights
    trial = next(t for t in parse_spec(SPEC % entry).trials if not t.is_baseline)
    row = run_trial(trial, tmp_path)
    assert row["status"] == "failed"
    assert row["error"].startswith("TrainingDiverged: train "), row["error"]
    assert "in epoch 1" in row["error"] and "train.lr" in row["error"], row["error"]
    assert "LinAlgError" in row["error"] or "loss became" in row["error"], row["error"]
    assert row["last_good_epoch"] is None


class Poisoned(Method):
    """Projects the first layer with an SVD before every step (as TRP does); at ``nan_at`` the
    weights turn NaN first (a step that blew up); at ``crash_at`` the hook fails on finite weights."""

    def __init__(self, nan_at: int | None = None, crash_at: int | None = None, hook: str = "before_step"):
        self.nan_at, self.crash_at, self.hook = nan_at, crash_at, hook

    def _project(self, model, step):
        w = next(model.parameters())
        if step == self.nan_at:
            with torch.no_grad():
                w.fill_(float("nan"))
        if step == self.crash_at:
            raise ValueError("a bug in the method")
        with torch.no_grad():
            w.copy_(lowrank.project([w], "linear" if w.dim() == 2 else "channel", "ratio:1.0", False, solver="svd")[0][0])

    def before_step(self, model, step):
        if self.hook == "before_step":
            self._project(model, step)

    def after_backward(self, model, step):
        if self.hook == "after_backward":
            self._project(model, step)


def _fit(method, phase: Phase | None = None, epochs: int = 3) -> tuple[Progress, pytest.ExceptionInfo, object]:
    torch.manual_seed(0)
    data = build_data({"name": "digits"}, seed=0, batch_size=64, augment=False)
    model = build_model("mlp", data.num_classes, data.input_shape)
    config = TrainConfig(epochs=epochs, lr=0.05, momentum=0.9, weight_decay=1e-4, schedule="cosine")
    prog = Progress()
    with pytest.raises(Exception) as ei:
        train(model, data, config, phase=phase, method=method, loop=Loop(progress=prog, log=lambda s: None))
    return prog, ei, data


@pytest.mark.parametrize("hook", ["before_step", "after_backward"])
def test_a_hook_whose_svd_meets_nan_weights_is_training_diverged_in_that_epoch(hook):
    data_steps = build_data({"name": "digits"}, seed=0, batch_size=64, augment=False).steps_per_epoch
    prog, ei, _ = _fit(Poisoned(nan_at=data_steps + 2, hook=hook))
    assert ei.type is TrainingDiverged, f"{ei.type.__name__}: {ei.value}"
    assert ei.value.epoch == 2 and ei.value.phase == "train"
    msg = str(ei.value)
    assert msg.startswith("train weights became non-finite in epoch 2") and f"Poisoned.{hook}" in msg, msg
    assert "LinAlgError" in msg and "try a lower train.lr" in msg
    assert isinstance(ei.value.__cause__, torch.linalg.LinAlgError)   # the hook's own error kept as the cause
    assert prog.last_good_epoch == 1


def test_a_fine_tuning_hook_meeting_nan_weights_names_the_phase_and_its_epoch_in_the_trial():
    data_steps = build_data({"name": "digits"}, seed=0, batch_size=64, augment=False).steps_per_epoch
    phase = Phase(name="finetune", epochs=2, lr=0.01, epoch_offset=3)
    prog, ei, _ = _fit(Poisoned(nan_at=data_steps), phase=phase)
    assert ei.type is TrainingDiverged, f"{ei.type.__name__}: {ei.value}"
    assert ei.value.epoch == 5 and ei.value.phase == "finetune"
    assert str(ei.value).startswith("finetune weights became non-finite in epoch 5")
    assert "train.finetune_lr" in str(ei.value)


def test_a_hook_that_fails_on_finite_weights_keeps_its_own_error():
    _, ei, _ = _fit(Poisoned(crash_at=5))
    assert ei.type is ValueError and str(ei.value) == "a bug in the method"


class PoisonedAtEpochEnd(Method):
    """Weights turn NaN after the last step's backward of epoch 1 (the epoch's loss stays finite);
    ``epoch_metrics`` then runs an SVD on them, as TRP's does."""

    def __init__(self, last_step: int):
        self.last_step = last_step

    def after_backward(self, model, step):
        if step == self.last_step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    def epoch_metrics(self, model):
        return {"top_s": float(torch.linalg.svdvals(next(model.parameters()))[0])}


def test_epoch_metrics_meeting_nan_weights_is_training_diverged_in_that_epoch():
    torch.manual_seed(0)
    data = build_data({"name": "digits"}, seed=0, batch_size=64, augment=False)
    model = build_model("mlp", data.num_classes, data.input_shape)
    config = TrainConfig(epochs=3, lr=0.05, momentum=0.9, weight_decay=1e-4, schedule="cosine")
    sent: list[dict] = []
    with pytest.raises(Exception) as ei:
        train(model, data, config, method=PoisonedAtEpochEnd(data.steps_per_epoch - 1),
              loop=Loop(log=lambda s: None, on_epoch=sent.append))
    assert ei.type is TrainingDiverged, f"{ei.type.__name__}: {ei.value}"
    assert ei.value.epoch == 1 and "PoisonedAtEpochEnd.epoch_metrics" in str(ei.value)
    assert sent == []
