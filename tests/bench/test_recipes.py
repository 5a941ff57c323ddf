"""Training recipes (train.optimizer, warmup_epochs, label_smoothing, grad_clip, ema, drop_path,
train.finetune) and Method.hooks_in_finetune: each key checked in one line, each doing exactly
what it says on fixed numbers, and the trial ids of specs that do not use them unchanged."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from rankbench.bench.checks import UserError
from rankbench.bench.running.run import run_trial
from rankbench.bench.spec.parse import load_spec, parse_spec
from rankbench.bench.spec.shipped import shipped_specs
from rankbench.bench.train.config import TrainConfig
from rankbench.bench.train.ema import EmaWeights
from rankbench.bench.train.loop import Loop, make_scheduler, train, train_step
from rankbench.methods.api.base import Method
from rankbench.methods.api.registry import register

CONFIGS = Path(__file__).parents[2] / "bench" / "configs"
SPEC = """
sweep: recipes
seeds: [0]
data: {name: digits}
model: mlp
train: {epochs: 1, batch_size: 256, lr: 0.05}
measure: {latency_repeats: 2}
methods:
  - {name: dense}
"""

# the trial ids of two shipped specs as they were before these keys existed
QUICK_IDS = {
    "0e067aa65462", "2aa6c2d8fb87", "9e2125cf42a7", "be4cbbdf35e3", "01fcc5417a1f", "c760c7e406cd",
    "f7ffed36d2f1", "c568e165fc98", "b2ce6e0f4d5d", "148328ad82ac", "a24f0ff005c6", "a4f18c794b62",
    "1c93fc14200d", "27f19c0ef6d6", "64d061fe7448", "00485a54b60c", "a8f861a49bdb", "95b1a5d0d9c4",
    "b79d9479cb13", "3b68f05189a5", "3d89b2b03128", "9b0d86b6ab6b", "a2a673284c59", "c287b1c14e2c"}
METHODS_IDS = {"de87527a0688", "eb097831b53e", "6a9ebb922199", "da51d584f3bf", "897d1d0c4f9e", "56d1b285cee5",
               "40c4e51c814c", "2091fcea56d4", "679128988f56", "a9ed7188aa12", "ebf3eaef3c84"}
# every new key spelled out at its default
AT_DEFAULT = ["train.optimizer=sgd", "train.optimizer_options={}", "train.warmup_epochs=0",
              "train.label_smoothing=0.0", "train.grad_clip=0", "train.ema=0", "train.drop_path=0",
              "train.finetune={}"]


def parse(**train):
    return TrainConfig.parse("train", train)


# --- each key checked, in one line -----------------------------------------------------------

@pytest.mark.parametrize("given, start", [
    ({"optimizer": "adamq"}, "train.optimizer: 'adamq': not a torch.optim optimizer (did you mean 'adamw'?)"),
    ({"optimizer": 3}, "train.optimizer: 3; accepted: sgd, nesterov, adamw or a torch.optim class name"),
    ({"optimizer": "LBFGS"}, "train.optimizer: 'LBFGS': it needs a closure"),
    ({"optimizer": "Rprop"}, "train.weight_decay: 0.0001: Rprop takes no weight decay"),
    ({"optimizer": "adamw", "optimizer_options": {"betas": [0.9, 2.0]}},
     "train.optimizer_options: {'betas': [0.9, 2.0]}: adamw refused them: Invalid beta"),
    ({"optimizer_options": {"betas": [0.9, 0.99]}},
     "train.optimizer_options: {'betas': [0.9, 0.99]}: sgd refused them: SGD.__init__() got an unexpected"),
    ({"optimizer_options": {"lr": 0.1}}, "train.optimizer_options.lr: 0.1: set by train.lr"),
    ({"optimizer_options": {"momentum": 0.5}}, "train.optimizer_options.momentum: 0.5: set by train.momentum"),
    ({"optimizer": "adam", "optimizer_options": {"eps": "1e-8"}}, "train.optimizer_options.eps: '1e-8': YAML reads"),
    ({"optimizer_options": [1]}, "train.optimizer_options: [1]; accepted: a mapping"),
    ({"warmup_epochs": -1}, "train.warmup_epochs: -1; accepted: a number in [0.0, inf)"),
    ({"label_smoothing": 1.0}, "train.label_smoothing: 1.0; accepted: a number in [0.0, 1.0)"),
    ({"grad_clip": "x"}, "train.grad_clip: 'x'; accepted: a number in [0.0, inf)"),
    ({"ema": 1}, "train.ema: 1; accepted: a number in [0.0, 1.0)"),
    ({"drop_path": 1.5}, "train.drop_path: 1.5; accepted: a number in [0.0, 1.0)"),
    ({"finetune": 3}, "train.finetune: 3; accepted: a mapping"),
    ({"finetune": {"epochs": 3}}, "train.finetune.epochs: 3: unknown key"),
    ({"finetune": {"lr": 0}}, "train.finetune.lr: 0; accepted: a number in (0.0, inf)"),
    ({"finetune_lr": 0.01, "finetune": {"lr": 0.02}}, "train.finetune.lr: 0.02: train.finetune_lr is 0.01"),
    ({"finetune": {"optimizer": "nope"}}, "train.finetune.optimizer: 'nope': not a torch.optim optimizer"),
    ({"finetune": {"ema": -0.5}}, "train.finetune.ema: -0.5; accepted: a number in [0.0, 1.0)"),
    ({"optimizer": "adamw", "optimizer_options": {"betas": [0.9, 0.95]}, "finetune": {"optimizer": "sgd",
      "optimizer_options": {"amsgrad": True}}}, "train.finetune.optimizer_options: {'amsgrad': True}: sgd refused"),
])
def test_each_key_is_checked_with_a_one_line_error(given, start):
    with pytest.raises(UserError) as e:
        parse(**given)
    assert str(e.value).startswith(start) and "\n" not in str(e.value)


def test_drop_path_refused_in_one_line_for_a_model_without_it():
    with pytest.raises(UserError) as e:
        parse_spec(SPEC.replace("lr: 0.05}", "lr: 0.05, drop_path: 0.1}"))
    assert str(e.value).startswith("train.drop_path: 0.1: mlp has no drop path; accepted: 0 for this model")
    assert "\n" not in str(e.value)


def test_drop_path_is_for_timm_models_that_take_it():
    pytest.importorskip("timm")
    from rankbench.bench.models.zoo import check_drop_path

    check_drop_path("timm:resnet18", "timm:resnet18", {}, 0.1, "train.drop_path")     # takes drop_path_rate
    with pytest.raises(UserError, match=r"^train.drop_path: 0.1: timm:vgg11's constructor takes no drop_path_rate"):
        check_drop_path("timm:vgg11", "timm:vgg11", {}, 0.1, "train.drop_path")
    with pytest.raises(UserError, match=r"^train.drop_path: 0.1: two values for one rate"):
        check_drop_path("timm:resnet18", "timm:resnet18", {"drop_path_rate": 0.2}, 0.1, "train.drop_path")


# --- the optimizer ---------------------------------------------------------------------------

def test_optimizer_built_is_the_named_class_with_its_options():
    params = [nn.Parameter(torch.zeros(2))]
    opt = parse(optimizer="adamw", weight_decay=0.05, optimizer_options={"betas": [0.9, 0.95], "eps": 1.0e-6}) \
        .recipe().make_optimizer(params, 0.001)
    assert type(opt) is torch.optim.AdamW
    g = opt.param_groups[0]
    assert (g["lr"], g["weight_decay"], tuple(g["betas"]), g["eps"]) == (0.001, 0.05, (0.9, 0.95), 1.0e-6)
    sgd = parse(optimizer="nesterov", momentum=0.8).recipe().make_optimizer(params, 0.1)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["nesterov"] is True
    assert sgd.param_groups[0]["momentum"] == 0.8
    plain = parse().recipe().make_optimizer(params, 0.1)   # the default: today's SGD + momentum
    assert type(plain) is torch.optim.SGD and plain.param_groups[0]["nesterov"] is False
    assert (plain.param_groups[0]["momentum"], plain.param_groups[0]["weight_decay"]) == (0.9, 1.0e-4)
    rms = parse(optimizer="rmsprop", optimizer_options={"alpha": 0.9}).recipe().make_optimizer(params, 0.01)
    assert type(rms) is torch.optim.RMSprop and rms.param_groups[0]["alpha"] == 0.9
    assert parse(optimizer="rmsprop").optimizer == "RMSprop" and parse(optimizer="SGD").optimizer == "sgd"


def test_finetune_recipe_inherits_training_but_lr_warmup_and_schedule():
    tc = parse(optimizer="adamw", optimizer_options={"betas": [0.9, 0.95]}, warmup_epochs=2, label_smoothing=0.1,
               grad_clip=1.0, ema=0.99, schedule="step", milestones=[3], finetune_lr=0.002)
    ft = tc.finetune_phase(3, epoch_offset=5)
    assert (ft.name, ft.epochs, ft.lr, ft.epoch_offset) == ("finetune", 3, 0.002, 5)
    r = ft.recipe
    assert (r.optimizer, dict(r.optimizer_options), r.label_smoothing, r.grad_clip, r.ema) == \
        ("adamw", {"betas": (0.9, 0.95)}, 0.1, 1.0, 0.99)
    assert (r.schedule, r.milestones, r.warmup_epochs) == ("cosine", (), 0.0)
    # another optimizer starts from its own options; finetune.lr is finetune_lr
    other = parse(optimizer="adamw", optimizer_options={"betas": [0.9, 0.95]},
                  finetune={"optimizer": "sgd", "lr": 0.03, "ema": 0})
    assert (other.finetune_lr, other.finetune_recipe().optimizer, other.finetune_recipe().optimizer_options) == \
        (0.03, "sgd", ())
    assert TrainConfig.from_id_form(other.id_form()) == other and TrainConfig.from_id_form(tc.id_form()) == tc


# --- the trial ids ---------------------------------------------------------------------------

def test_ids_of_shipped_specs_are_unchanged():
    assert {t.id for t in load_spec(CONFIGS / "quick.yaml", check=False).trials} == QUICK_IDS
    assert {t.id for t in load_spec(CONFIGS / "methods.yaml", check=False).trials} == METHODS_IDS
    assert set(TrainConfig().id_form()) == {"epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule",
                                            "milestones", "gamma", "finetune_lr", "augment", "amp", "channels_last"}
    for name in shipped_specs():
        path = CONFIGS / f"{name}.yaml"
        spelled = yaml.safe_load(path.read_text()).get("train") or {}
        at_default = [o for o in AT_DEFAULT if o.partition("=")[0].split(".")[1] not in spelled]
        plain = [t.id for t in load_spec(path, check=False).trials]
        assert [t.id for t in load_spec(path, check=False, overrides=at_default).trials] == plain, name


def test_a_finetune_key_equal_to_what_it_inherits_leaves_the_id_alone():
    plain = parse_spec(SPEC, check=False).trials[0].id
    same = parse_spec(SPEC, check=False, overrides=["train.finetune={lr: 0.01, optimizer: sgd, momentum: 0.9}"])
    assert same.trials[0].id == plain
    assert parse_spec(SPEC, check=False, overrides=["train.finetune={ema: 0.9}"]).trials[0].id != plain


# --- warmup, label smoothing, grad clip --------------------------------------------------------

def test_warmup_lr_of_the_first_steps_is_exact():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, "cosine", epochs=3, steps_per_epoch=4, warmup_epochs=1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # 4 warmup steps to the peak, then a cosine over the 8 steps left
    expected = [0.1 * k / 4 for k in (1, 2, 3, 4)] + [0.1 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # step schedule: the milestones still count from the phase's start
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s2 = make_scheduler(opt2, "step", epochs=3, steps_per_epoch=2, milestones=[2], gamma=0.1, warmup_epochs=1)
    seen = []
    for _ in range(6):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        s2.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.1, 0.1], rel=1e-12)


def toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()


def test_label_smoothing_is_torchs_cross_entropy_on_the_same_logits():
    model = toy()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    model.train()
    state = copy.deepcopy(model.state_dict())
    expected = nn.CrossEntropyLoss(label_smoothing=0.2)(model(x), y)
    plain = nn.CrossEntropyLoss()(model(x), y)
    model.load_state_dict(state)    # the forward above moved the BN statistics: start again
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train_step(model, x, y, opt, label_smoothing=0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-14) and abs(loss.item() - plain.item()) > 1e-3


def test_grad_clip_bounds_the_global_norm():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)

    def norm_after(clip: float) -> float:
        model = toy()
        train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0), grad_clip=clip)
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()

    free = norm_after(0.0)
    assert free > 0
    bound = free / 4                               # below the unclipped norm: the clip must act
    assert bound * (1 - 1e-5) <= norm_after(bound) <= bound
    assert norm_after(4 * free) == pytest.approx(free, rel=1e-12)    # above it: nothing changes


# --- EMA ---------------------------------------------------------------------------------------

def closed_form(ws: list[dict[str, torch.Tensor]], d: float) -> dict[str, torch.Tensor]:
    """d^k w_0 + (1 - d) sum_{i=1..k} d^(k-i) w_i, per floating entry."""
    k = len(ws) - 1
    return {n: d ** k * ws[0][n] + (1 - d) * sum(d ** (k - i) * ws[i][n] for i in range(1, k + 1))
            for n in ws[0] if ws[0][n].is_floating_point()}


def test_ema_weights_are_the_closed_form_average():
    model = toy()
    ema = EmaWeights(model, 0.9)
    ws = [{k: v.clone() for k, v in model.state_dict().items()}]
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 4, dtype=torch.float64))     # moves the BN statistics too
        ema.update(model)
        ws.append({k: v.clone() for k, v in model.state_dict().items()})
    want = closed_form(ws, 0.9)
    for n, v in want.items():
        assert torch.allclose(ema.state[n], v, rtol=1e-12, atol=1e-14), n
    assert ema.state["1.num_batches_tracked"].item() == 5      # copied, not averaged


@dataclass
class ToyData:
    """Float64 batches for the training loop: what it reads of a dataset and nothing more."""

    train: list
    val: list
    steps_per_epoch: int
    num_classes: int = 3


class Record(Method):
    """Keeps the weights each step starts from (``before_step``)."""

    def __init__(self):
        self.seen: list[dict[str, torch.Tensor]] = []

    def before_step(self, model, step):
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_the_loop_ends_with_the_ema_of_every_step_and_checkpoints_it(tmp_path):
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))
               for _ in range(3)]
    data = ToyData(train=batches, val=batches[:1], steps_per_epoch=3)
    model, rec, ck = toy(), Record(), tmp_path / "ck.pt"
    cfg = TrainConfig(epochs=2, lr=0.1, ema=0.8, optimizer="adamw", warmup_epochs=1, grad_clip=1.0)
    train(model, data, cfg, method=rec, loop=Loop(checkpoint=ck, log=lambda line: None))
    saved = torch.load(ck, weights_only=True)
    ws = rec.seen + [saved["model"]]       # w_0 .. w_5 and the raw weights after the last step
    want = closed_form(ws, 0.8)
    final = model.state_dict()
    for n, v in want.items():
        assert torch.allclose(saved["ema"]["state"][n], v, rtol=1e-12, atol=1e-14), n
        assert torch.equal(final[n], saved["ema"]["state"][n]), n   # the phase ends holding the EMA


# --- whole trials --------------------------------------------------------------------------------

RECIPE = ("train: {epochs: 1, batch_size: 256, lr: 0.002, optimizer: adamw, warmup_epochs: 0.5, ema: 0.9,\n"
          "        label_smoothing: 0.1, grad_clip: 5.0, finetune: {optimizer: sgd, lr: 0.01}}")


def test_a_one_epoch_run_with_a_modern_recipe_ends_ok(tmp_path):
    sweep = parse_spec(SPEC.replace("train: {epochs: 1, batch_size: 256, lr: 0.05}", RECIPE) +
                       '  - {name: svd, scheme: linear, rule: "speedup:1.5", finetune_epochs: 1}\n')
    rows = [run_trial(t, tmp_path) for t in sweep.trials]      # the baseline first
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("error") for r in rows]
    assert [h["phase"] for h in rows[1]["history"]] == ["finetune"]
    assert all(r["top1"] is not None for r in rows)


@register("test_hooks_in_finetune")
class HooksInFinetune(Method):
    """Test-only: records which model each hook saw (the compressed one is marked) and whether
    param_groups was asked for it; ``hooks_in_finetune`` from the class."""

    hooks_in_finetune = True
    calls: list[tuple[str, bool]] = []

    def __init__(self):
        self.finetune_epochs = 1

    def before_step(self, model, step):
        type(self).calls.append(("before_step", hasattr(model, "compressed")))

    def param_groups(self, model):
        type(self).calls.append(("param_groups", hasattr(model, "compressed")))
        return None

    def compress(self, model):
        small = copy.deepcopy(model)
        small.compressed = True
        return small


@register("test_no_hooks_in_finetune")
class NoHooksInFinetune(HooksInFinetune):
    hooks_in_finetune = False


@pytest.mark.parametrize("name, in_finetune", [("test_hooks_in_finetune", True),
                                               ("test_no_hooks_in_finetune", False)])
def test_hooks_in_finetune_makes_the_harness_call_the_hooks_after_compress(tmp_path, name, in_finetune):
    HooksInFinetune.calls = []
    sweep = parse_spec(SPEC.replace("{name: dense}", f"{{name: {name}}}"), check=False)
    trial = next(t for t in sweep.trials if t.method == name)
    row = run_trial(trial, tmp_path)
    assert row["status"] == "ok", row.get("error")
    calls = HooksInFinetune.calls
    steps = sum(1 for c in calls if c == ("before_step", False))
    assert steps > 0 and calls[0] == ("param_groups", False)
    after = [c for c in calls if c[1]]       # on the compressed model
    assert after == ([("param_groups", True)] + [("before_step", True)] * steps if in_finetune else [])
