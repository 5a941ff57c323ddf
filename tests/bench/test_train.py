"""The training loop: it learns, calls the method's hooks, resumes exactly, stops on NaN."""
from __future__ import annotations

import pytest
import torch

from rankbench.bench.data import build_data
from rankbench.bench.models.builtin import build_model
import dataclasses

from rankbench.bench.train.config import TrainConfig
from rankbench.bench.train.loop import Loop, Progress, TrainingDiverged, make_scheduler, train
from rankbench.methods.api.base import Method

FIT = dict(lr=0.05, momentum=0.9, weight_decay=1e-4, schedule="cosine")
CONFIG_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def fit(model, data, epochs, method=None, **opts):
    """``train`` at FIT's options for ``epochs``; ``opts``: TrainConfig fields (amp,
    channels_last, compile, ...) or Loop fields (checkpoint, progress, log, ...)."""
    config = TrainConfig(epochs=epochs, **{k: v for k, v in opts.items() if k in CONFIG_KEYS})
    return train(model, data, config, method=method, loop=Loop(**{k: v for k, v in opts.items() if k not in CONFIG_KEYS}))


def setup(seed: int = 0):
    torch.manual_seed(seed)
    data = build_data({"name": "digits"}, seed=seed, batch_size=64, augment=False)
    model = build_model("mlp", data.num_classes, data.input_shape)
    return data, model


class Counting(Method):
    """Counts the hooks; optionally raises (a crash) or poisons a weight (a divergence) at a step."""

    def __init__(self, crash_at: int | None = None, nan_at: int | None = None):
        self.before = self.after = 0
        self.crash_at, self.nan_at = crash_at, nan_at

    def before_step(self, model, step):
        if step == self.crash_at:
            raise RuntimeError("simulated crash")
        if step == self.nan_at:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        self.before += 1

    def after_backward(self, model, step):
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        self.after += 1


def test_trains_calls_hooks_every_step_and_logs_each_epoch():
    data, model = setup()
    m = Counting()
    lines: list[str] = []
    prog = fit(model, data, epochs=3, method=m, log=lines.append)
    assert m.before == m.after == 3 * data.steps_per_epoch
    assert [h["epoch"] for h in prog.history] == [1, 2, 3]
    assert prog.history[-1]["loss"] < prog.history[0]["loss"]
    # digits MLP learns in 3 epochs (93-95% over seeds 0-3): far above chance (10%), on any CPU
    assert prog.history[-1]["val_top1"] > 50.0
    assert len(lines) == 3 and all("loss" in ln and "val top-1" in ln for ln in lines)
    assert prog.last_good_epoch == 3


def test_resume_from_epoch_checkpoint_matches_an_uninterrupted_run(tmp_path):
    data, ref = setup()
    fit(ref, data, epochs=3, log=lambda s: None)

    data, model = setup()
    ck = tmp_path / "epoch.pt"
    crash = Counting(crash_at=data.steps_per_epoch + 3)    # dies inside epoch 2
    prog = Progress()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(model, data, epochs=3, method=crash, checkpoint=ck, progress=prog, log=lambda s: None)
    assert prog.last_good_epoch == 1 and torch.load(ck, weights_only=False)["epoch"] == 1

    data, fresh = setup()                                      # a new process would start like this
    lines: list[str] = []
    prog2 = fit(fresh, data, epochs=3, checkpoint=ck, log=lines.append)
    assert "resumed from epoch 1/3" in lines[0]
    assert [h["epoch"] for h in prog2.history] == [1, 2, 3]
    for a, b in zip(ref.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_nan_loss_raises_training_diverged_with_the_epoch():
    data, model = setup()
    prog = Progress()
    with pytest.raises(TrainingDiverged) as ei:
        fit(model, data, epochs=3, method=Counting(nan_at=data.steps_per_epoch + 1), progress=prog,
            log=lambda s: None)
    assert ei.value.epoch == 2 and "epoch 2" in str(ei.value)
    assert prog.last_good_epoch == 1


def test_schedules_cosine_per_iteration_and_step_at_milestones():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = make_scheduler(opt, "step", epochs=10, steps_per_epoch=5, milestones=[2, 4], gamma=0.1)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01)

    opt = torch.optim.SGD([p], lr=1.0)
    s = make_scheduler(opt, "cosine", epochs=2, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5) and all(a > b for a, b in zip(lrs, lrs[1:]))


def test_channels_last_cnn_trains_and_returns_to_contiguous_weights():
    data = build_data({"name": "digits"}, seed=0, batch_size=64, augment=False)
    model = build_model("cnn", data.num_classes, data.input_shape)
    prog = fit(model, data, epochs=1, channels_last=True, amp=True, log=lambda s: None)
    assert prog.history[0]["loss"] < 2.3            # learned something (ln 10 = 2.30 at chance)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()               # saved / measured in the default layout


def test_a_compiled_forward_sees_trps_in_place_projection_and_trains_like_eager():
    # aot_eager traces through dynamo and AOTAutograd like inductor does, without generating code
    # (inductor would take a minute of C++ compilation here); a graph that had frozen the weights
    # as constants would train on stale, unprojected weights and drift from eager at once.
    # Compared exactly: float64, a few steps on the same batches from the same weights, through
    # the loop's own train_step with its forward= the compiled module, as train(compile=...) runs
    # it. (In float32 over an epoch, the traced graph's rounding, like another CPU's, is amplified
    # by SGD and the energy rule's rank threshold: a benchmark, not an equality.)
    from rankbench.bench.train.loop import compiled, make_optimizer, train_step
    from rankbench.methods.api.base import Context
    from rankbench.methods.trp import TRP

    steps, shape = 6, (1, 8, 8)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, *shape, generator=g, dtype=torch.float64), torch.randint(0, 10, (32,), generator=g))
               for _ in range(steps)]
    torch.manual_seed(0)
    init = build_model("cnn", 10, shape).double()

    def run(compile):
        import copy

        model = copy.deepcopy(init)
        trp = TRP(scheme="channel", nuclear=3e-4, export="energy:0.9")
        trp.ctx = Context(shape, 10, steps, 1)
        trp.attach(model, trp.ctx)
        forward = compiled(model, compile) if compile else None
        opt = make_optimizer(model, 0.05, 0.9, 1e-4)
        for step, (x, y) in enumerate(batches):
            train_step(model, x, y, opt, trp, step, forward=forward)
        return model, trp

    (eager, trp), (comp, _) = run(False), run("aot_eager")
    assert trp.names                      # TRP projected layers at every step
    moved = [float((a - b).norm() / b.norm()) for a, b in zip(eager.state_dict().values(), init.state_dict().values())
             if b.is_floating_point() and b.norm() > 0]
    assert max(moved) > 1e-2              # the projection moved the weights far beyond the tolerance
    # relative per tensor: the two graphs may differ by float64 rounding only (measured: bit for
    # bit here; float32 instead of float64 alone moves them by 1e-6)
    for (name, a), b in zip(eager.state_dict().items(), comp.state_dict().values()):
        assert a.dtype == b.dtype, name
        if a.is_floating_point():
            assert float((a - b).norm()) <= 1e-9 * float(b.norm()), name
        else:                             # BN's step counters
            assert torch.equal(a, b), name


# --- the Method API hooks the loop calls --------------------------------------------------------

class ExtraLoss(Method):
    """A constant extra loss: no gradient, so training is unchanged and the loss shifts by it."""

    def extra_loss(self, model, step):
        return torch.tensor(5.0)


def test_extra_loss_is_added_to_the_training_loss():
    data, plain = setup()
    base = fit(plain, data, epochs=1, log=lambda s: None).history[0]["loss"]
    data, model = setup()
    shifted = fit(model, data, epochs=1, method=ExtraLoss(), log=lambda s: None).history[0]["loss"]
    assert shifted == pytest.approx(base + 5.0, abs=1e-4)
    for a, b in zip(plain.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b)


class FrozenFirst(Method):
    """Replaces the first Linear at attach (a fresh copy) and trains it with lr 0 in its own group."""

    def attach(self, model, ctx):
        old = model[1]
        self.new = torch.nn.Linear(old.in_features, old.out_features)
        self.new.load_state_dict(old.state_dict())
        model[1] = self.new

    def param_groups(self, model):
        rest = [p for n, p in model.named_parameters() if not n.startswith("1.")]
        return [{"params": list(self.new.parameters()), "lr": 0.0}, {"params": rest}]


class Replacing(FrozenFirst):
    def param_groups(self, model):
        return None


def test_optimizer_is_built_after_attach_from_the_method_s_groups():
    data, model = setup()
    m = FrozenFirst()
    m.attach(model, None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, data, epochs=1, method=m, log=lambda s: None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in ("1.weight", "1.bias"))   # its group has lr 0
    assert not torch.equal(before["3.weight"], after["3.weight"])
    # a layer replaced at attach is trained (the optimizer holds the new layer's parameters)
    data, model = setup()
    r = Replacing()
    r.attach(model, None)
    w = r.new.weight.detach().clone()
    fit(model, data, epochs=1, method=r, log=lambda s: None)
    assert model[1] is r.new and not torch.equal(w, r.new.weight)


class Stateful(Counting):
    def state_dict(self):
        return {"before": self.before}

    def load_state_dict(self, state):
        self.before = state["before"]


def test_method_state_is_checkpointed_and_restored_on_resume(tmp_path):
    data, model = setup()
    ck = tmp_path / "epoch.pt"
    first = Stateful(crash_at=data.steps_per_epoch + 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(model, data, epochs=2, method=first, checkpoint=ck, log=lambda s: None)
    assert torch.load(ck, weights_only=False)["method"] == {"before": data.steps_per_epoch}
    data, fresh = setup()
    again = Stateful()
    fit(fresh, data, epochs=2, method=again, checkpoint=ck, log=lambda s: None)
    assert again.before == 2 * data.steps_per_epoch      # restored count + the second epoch's steps


def test_trp_warm_solver_state_survives_a_resume(tmp_path):
    from rankbench.methods.api.base import Context
    from rankbench.methods.trp import TRP

    def attached(model, data):
        trp = TRP(scheme="channel", solver="warm", export="energy:0.9")
        trp.ctx = Context(data.input_shape, data.num_classes, data.steps_per_epoch, 1)
        trp.attach(model, trp.ctx)
        return trp

    data, _ = setup()
    torch.manual_seed(0)
    model = build_model("cnn", data.num_classes, data.input_shape)
    ck = tmp_path / "epoch.pt"
    trp = attached(model, data)
    fit(model, data, epochs=1, method=trp, checkpoint=ck, log=lambda s: None)
    saved = trp.state_dict()["warm"]
    assert saved["warm"] + saved["cold"] > 0 and saved["starts"]

    fresh_model = build_model("cnn", data.num_classes, data.input_shape)
    fresh = attached(fresh_model, data)
    assert fresh.state_dict()["warm"]["starts"] == []
    fit(fresh_model, data, epochs=1, method=fresh, checkpoint=ck, log=lambda s: None)  # resumes: done
    got = fresh.state_dict()["warm"]
    assert (got["warm"], got["cold"]) == (saved["warm"], saved["cold"])
    assert [k for k, _ in got["starts"]] == [k for k, _ in saved["starts"]]
    for (_, a), (_, b) in zip(got["starts"], saved["starts"]):
        assert torch.equal(a, b)
    assert fresh.report().info["warm_start"] == {"warm": saved["warm"], "cold": saved["cold"]}
