"""The options a trial trains with, as one frozen object: ``TrainConfig``; the recipe of each
phase: ``Recipe`` and ``Phase``.

The spec's ``train:`` mapping is checked and completed here once (:meth:`TrainConfig.parse`);
the trial stores its :meth:`~TrainConfig.id_form` (every key, except the ones added after the
first sweeps ran while they are at their default: :data:`ID_OPTIONAL`), so a trial's id is what
it always was; the runner reads the object back (:meth:`TrainConfig.of`).

A phase of a trial (training, then fine-tuning after compression) trains with a
:class:`Recipe`: optimizer, schedule, warmup, label smoothing, gradient clipping, EMA.
Training's is made of the ``train`` keys; fine-tuning's of ``train.finetune`` (a mapping of the
:data:`FINETUNE_KEYS`), whose unspecified keys inherit training's, except ``lr`` (it is
``finetune_lr``), ``warmup_epochs`` (0: a warmup is sized for training's length) and the schedule
(cosine over the fine-tuning epochs, as always). Every optimizer is built here
(:func:`build_optimizer`): the spec check builds it once on a stand-in parameter, so a bad
optimizer name or option is refused before anything trains.

May import: ``rankbench.bench.checks`` only.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

from rankbench.bench.checks import (MAX_TEXT, bad, check_keys, clip, is_int, is_number, need_bool, need_choice,
                                    need_float, need_int, need_mapping, unknown)

SCHEDULES = ("cosine", "step")
# what train.compile takes besides true/false: torch.compile's modes (inductor) ...
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# rankbench's optimizer names; any other torch.optim class may be named too (case as torch spells it,
# or any case): it gets lr, weight_decay and optimizer_options
OPTIMIZERS = ("sgd", "nesterov", "adamw")
# torch.optim classes a step loop without closure, on dense gradients, cannot use: name -> why
UNUSABLE_OPTIMIZERS = {"LBFGS": "it needs a closure that re-runs the forward at every step",
                       "SparseAdam": "it takes sparse gradients only"}
# keys of optimizer_options that have a train key of their own
OWN_KEYS = {"lr": "train.lr (train.finetune.lr when fine-tuning)", "params": "the model's parameters",
            "weight_decay": "train.weight_decay"}
SGD_KEYS = {"momentum": "train.momentum", "nesterov": "optimizer: nesterov", "dampening": "0 with sgd and nesterov"}
# the keys of train.finetune: the recipe of the fine-tuning phase (lr is finetune_lr's other name)
FINETUNE_KEYS = ("optimizer", "optimizer_options", "lr", "momentum", "weight_decay", "warmup_epochs",
                 "label_smoothing", "grad_clip", "ema")
# left out of the id form while at their default, so the trials of older specs keep their ids
ID_OPTIONAL = ("sync_bn", "compile", "optimizer", "optimizer_options", "warmup_epochs", "label_smoothing",
               "grad_clip", "ema", "drop_path", "finetune")
OPTS = "optimizer_options"
Pairs = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Recipe:
    """How one phase updates the weights, besides its length and lr (:class:`Phase`).

    ``optimizer``: sgd (SGD + momentum), nesterov, adamw or a torch.optim class name, with
    ``optimizer_options`` (sorted pairs); ``momentum`` is SGD's (sgd, nesterov), ``weight_decay``
    every optimizer's that takes one. ``warmup_epochs``: the lr rises linearly over that many
    epochs before ``schedule``. ``label_smoothing``: of the cross-entropy. ``grad_clip``: the most
    global gradient norm (0: off). ``ema``: the decay of an exponential moving average of the
    weights (0: off) that validation reads and the phase ends with."""

    optimizer: str = "sgd"
    optimizer_options: Pairs = ()
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    ema: float = 0.0

    def make_optimizer(self, params: Any, lr: float) -> Any:
        """This recipe's ``torch.optim`` optimizer over ``params`` (tensors or param groups) at ``lr``."""
        return build_optimizer(params, self.optimizer, lr, self.momentum, self.weight_decay,
                               dict(self.optimizer_options))


@dataclass(frozen=True)
class TrainConfig:
    """Everything the training loop needs to know about how to train, and nothing about where."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    # fine-tuning after compress (decompose + fine-tune baselines) uses its own, smaller lr
    finetune_lr: float = 0.01
    augment: bool = False
    amp: bool = False
    channels_last: bool = False
    # batch norm statistics over the global batch of a data-parallel trial (GPU only)
    sync_bn: bool = False
    # torch.compile the training forward: true (inductor), a compile mode or a dynamo backend
    compile: bool | str = False
    # the recipe (see Recipe); optimizer_options as sorted (key, value) pairs
    optimizer: str = "sgd"
    optimizer_options: Pairs = ()
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    ema: float = 0.0
    # timm's drop_path_rate (stochastic depth) of the model, for every phase
    drop_path: float = 0.0
    # train.finetune: the fine-tuning recipe's keys that differ from what they inherit (no lr)
    finetune: Pairs = ()

    @classmethod
    def parse(cls, where: str, given: dict[str, Any]) -> "TrainConfig":
        """The spec's ``train`` mapping (``where`` names it in errors), checked and completed
        with the defaults."""
        check_keys(where, given, defaults())
        v = {**defaults(), **given}
        out = {   # checked in this order: the first bad field is the one named
            "epochs": need_int(f"{where}.epochs", v["epochs"], 0),
            "batch_size": need_int(f"{where}.batch_size", v["batch_size"], 1),
            "lr": need_float(f"{where}.lr", v["lr"], 0.0, lo_open=True),
            "finetune_lr": need_float(f"{where}.finetune_lr", v["finetune_lr"], 0.0, lo_open=True),
            "momentum": need_float(f"{where}.momentum", v["momentum"], 0.0, 1.0, hi_open=True),
            "weight_decay": need_float(f"{where}.weight_decay", v["weight_decay"], 0.0),
            "gamma": need_float(f"{where}.gamma", v["gamma"], 0.0, 1.0, lo_open=True),
            "schedule": need_choice(f"{where}.schedule", v["schedule"], SCHEDULES),
        }
        ms = v["milestones"]
        if not isinstance(ms, list) or not all(is_int(m) and m > 0 for m in ms) or ms != sorted(set(ms)):
            raise bad(f"{where}.milestones", ms, "a list of increasing epoch numbers >= 1, e.g. [81, 122]")
        out.update({k: need_bool(f"{where}.{k}", v[k]) for k in ("augment", "amp", "channels_last", "sync_bn")})
        out.update(_recipe_keys(where, v, out["lr"], out["momentum"], out["weight_decay"]))
        out["drop_path"] = need_float(f"{where}.drop_path", v["drop_path"], 0.0, 1.0, hi_open=True)
        base = cls(**out, milestones=tuple(int(m) for m in ms), compile=check_compile(f"{where}.compile", v["compile"]))
        ft = v["finetune"] if v["finetune"] is not None else {}
        lr = _finetune_lr(where, ft, given, out["finetune_lr"])
        return dataclasses.replace(base, finetune_lr=lr, finetune=_parse_finetune(f"{where}.finetune", ft, base, lr))

    def id_form(self) -> dict[str, Any]:
        """The mapping a Trial stores and hashes: every option, less the :data:`ID_OPTIONAL` ones
        at their default. The two mappings are flat: ``optimizer_options.<key>``,
        ``finetune.<key>`` and ``finetune.optimizer_options.<key>``."""
        base = TrainConfig()
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["milestones"] = list(self.milestones)
        out = {k: v for k, v in d.items() if k not in ID_OPTIONAL or v != getattr(base, k)}
        out.pop(OPTS, None)
        out.pop("finetune", None)
        out.update({f"{OPTS}.{k}": _listed(v) for k, v in self.optimizer_options})
        for k, v in self.finetune:
            if k != OPTS:
                out[f"finetune.{k}"] = v
            elif not v:      # no options, where training's would be inherited
                out[f"finetune.{OPTS}"] = {}
            else:
                out.update({f"finetune.{OPTS}.{o}": _listed(x) for o, x in v})
        return out

    @classmethod
    def from_id_form(cls, d: dict[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`id_form` (values as a Trial stores them)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kept: dict[str, Any] = {}
        opts: dict[str, Any] = {}
        ft: dict[str, Any] = {}
        ft_opts: dict[str, Any] | None = None
        for k, v in d.items():
            if k.startswith(f"{OPTS}."):
                opts[k[len(OPTS) + 1:]] = v
            elif k == f"finetune.{OPTS}":
                ft_opts = ft_opts or {}
            elif k.startswith(f"finetune.{OPTS}."):
                ft_opts = {**(ft_opts or {}), k[len(OPTS) + 10:]: v}
            elif k.startswith("finetune."):
                ft[k[len("finetune."):]] = v
            elif k in known:
                kept[k] = v
        if "milestones" in kept:
            kept["milestones"] = tuple(kept["milestones"])
        if ft_opts is not None:
            ft[OPTS] = _pairs(ft_opts)
        return cls(**kept, optimizer_options=_pairs(opts), finetune=tuple(sorted(ft.items())))

    @classmethod
    def of(cls, trial: Any) -> "TrainConfig":
        """A ``rankbench.bench.trial.Trial``'s training options."""
        return cls.from_id_form(trial.train_cfg)

    def recipe(self) -> Recipe:
        """The training phase's recipe."""
        return Recipe(optimizer=self.optimizer, optimizer_options=self.optimizer_options, momentum=self.momentum,
                      weight_decay=self.weight_decay, schedule=self.schedule, milestones=self.milestones,
                      gamma=self.gamma, warmup_epochs=self.warmup_epochs, label_smoothing=self.label_smoothing,
                      grad_clip=self.grad_clip, ema=self.ema)

    def finetune_recipe(self) -> Recipe:
        """The fine-tuning phase's recipe: ``train.finetune``'s keys over what they inherit."""
        return finetune_recipe(self.recipe(), dict(self.finetune))

    def train_phase(self) -> "Phase":
        """The training phase: ``epochs`` at ``lr`` with :meth:`recipe`."""
        return Phase(name="train", epochs=self.epochs, lr=self.lr, recipe=self.recipe())

    def finetune_phase(self, epochs: int, epoch_offset: int = 0) -> "Phase":
        """Fine-tuning after compress: ``epochs`` (the method's) at ``finetune_lr`` with
        :meth:`finetune_recipe`, its epochs counted from ``epoch_offset`` in the trial."""
        return Phase(name="finetune", epochs=epochs, lr=self.finetune_lr, epoch_offset=epoch_offset,
                     recipe=self.finetune_recipe())


@dataclass(frozen=True)
class Phase:
    """One call of the training loop: its name (checkpoints hold it, so a resume finds the
    phase it was in), its length, learning rate and recipe (None: the config's training
    recipe), and where its epochs count from in the trial (``epoch_offset``: fine-tuning's
    epochs follow training's)."""

    name: str
    epochs: int
    lr: float
    epoch_offset: int = 0
    recipe: Recipe | None = None


def defaults() -> dict[str, Any]:
    """The spec's ``train`` defaults, as YAML would write them."""
    d = {f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig)}
    d.update(milestones=[], optimizer_options={}, finetune={})
    return d


def finetune_recipe(train: Recipe, given: dict[str, Any]) -> Recipe:
    """Fine-tuning's recipe: ``given`` (``train.finetune``'s keys, checked) over training's, with
    a cosine schedule and no warmup; the optimizer options are inherited only with the optimizer."""
    name = given.get("optimizer", train.optimizer)
    base = dataclasses.replace(train, optimizer=name, schedule="cosine", milestones=(), warmup_epochs=0.0,
                               optimizer_options=train.optimizer_options if name == train.optimizer else ())
    return dataclasses.replace(base, **given)


def _recipe_keys(where: str, v: dict[str, Any], lr: float, momentum: float, weight_decay: float) -> dict[str, Any]:
    """The recipe keys of a ``train`` (or ``train.finetune``) mapping ``v`` that has them all."""
    name = optimizer_name(f"{where}.optimizer", v["optimizer"])
    opts = check_options(f"{where}.{OPTS}", v[OPTS], name)
    check_optimizer(where, name, opts, lr, momentum, weight_decay)
    return {"optimizer": name, OPTS: opts,
            "warmup_epochs": need_float(f"{where}.warmup_epochs", v["warmup_epochs"], 0.0),
            "label_smoothing": need_float(f"{where}.label_smoothing", v["label_smoothing"], 0.0, 1.0, hi_open=True),
            "grad_clip": need_float(f"{where}.grad_clip", v["grad_clip"], 0.0),
            "ema": need_float(f"{where}.ema", v["ema"], 0.0, 1.0, hi_open=True)}


def _finetune_lr(where: str, ft: Any, given: dict[str, Any], finetune_lr: float) -> float:
    """Fine-tuning's lr: ``train.finetune.lr``, or ``train.finetune_lr`` (the same knob; giving both,
    different, is refused)."""
    ft = need_mapping(f"{where}.finetune", ft)
    if "lr" not in ft:
        return finetune_lr
    lr = need_float(f"{where}.finetune.lr", ft["lr"], 0.0, lo_open=True)
    if "finetune_lr" in given and lr != finetune_lr:
        raise bad(f"{where}.finetune.lr", ft["lr"], f"one fine-tuning lr: {where}.finetune_lr or {where}.finetune.lr",
                  f"{where}.finetune_lr is {given['finetune_lr']}")
    return lr


def _parse_finetune(where: str, ft: dict[str, Any], train: TrainConfig, lr: float) -> Pairs:
    """``train.finetune`` checked (its optimizer built once at ``lr``), kept as the keys whose value
    differs from what they would inherit, so spelling a default out leaves the trial id alone."""
    check_keys(where, ft, FINETUNE_KEYS)
    given = {k: x for k, x in ft.items() if k != "lr"}
    name = optimizer_name(f"{where}.optimizer", given["optimizer"]) if "optimizer" in given else train.optimizer
    inherited = finetune_recipe(train.recipe(), {"optimizer": name})
    full = {"optimizer": inherited.optimizer, OPTS: dict(inherited.optimizer_options), "momentum": inherited.momentum,
            "weight_decay": inherited.weight_decay, "warmup_epochs": 0.0, "label_smoothing": inherited.label_smoothing,
            "grad_clip": inherited.grad_clip, "ema": inherited.ema, **given}
    if full[OPTS] is None:
        full[OPTS] = {}
    momentum = need_float(f"{where}.momentum", full["momentum"], 0.0, 1.0, hi_open=True)
    weight_decay = need_float(f"{where}.weight_decay", full["weight_decay"], 0.0)
    checked = {**_recipe_keys(where, full, lr, momentum, weight_decay), "momentum": momentum,
               "weight_decay": weight_decay}
    # the optimizer against training's; the rest against what they inherit with that optimizer
    return tuple(sorted((k, x) for k, x in checked.items()
                        if x != (train.optimizer if k == "optimizer" else getattr(inherited, k))))


# --- optimizers -----------------------------------------------------------------------------

def torch_optimizers() -> list[str]:
    """Every ``torch.optim`` optimizer class by name (:data:`UNUSABLE_OPTIMIZERS` included)."""
    import torch

    return sorted(n for n, c in vars(torch.optim).items()
                  if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != "Optimizer")


def optimizer_name(where: str, v: Any) -> str:
    """``v`` as the recipe keeps it: sgd, nesterov, adamw (any case: ``SGD`` is sgd), or a
    ``torch.optim`` class name in torch's spelling (``adam`` -> ``Adam``)."""
    if not isinstance(v, str):
        raise bad(where, v, f"{', '.join(OPTIMIZERS)} or a torch.optim class name (e.g. Adam, RMSprop)")
    if v.lower() in OPTIMIZERS:
        return v.lower()
    names = torch_optimizers()
    name = next((n for n in names if n.lower() == v.lower()), None)
    if name is None:
        raise unknown(where, v, [*OPTIMIZERS, *(n for n in names if n not in UNUSABLE_OPTIMIZERS)],
                      "not a torch.optim optimizer")
    if name in UNUSABLE_OPTIMIZERS:
        raise bad(where, v, f"{', '.join(OPTIMIZERS)} or another torch.optim class", UNUSABLE_OPTIMIZERS[name])
    return name


def check_options(where: str, v: Any, name: str) -> Pairs:
    """``optimizer_options``: a mapping of the optimizer's keyword arguments to numbers, booleans,
    strings or lists of numbers (``betas: [0.9, 0.95]``), as sorted pairs; the keys the recipe
    sets itself are refused (:data:`OWN_KEYS`, and :data:`SGD_KEYS` for sgd and nesterov)."""
    v = {} if v is None else need_mapping(where, v)
    own = {**OWN_KEYS, **(SGD_KEYS if name in ("sgd", "nesterov") else {})}
    for k, x in v.items():
        if k in own:
            raise bad(f"{where}.{k}", x, f"{name}'s other options", f"set by {own[k]}")
        if isinstance(x, str) and _is_float_text(x):
            raise bad(f"{where}.{k}", x, "a number", "YAML reads a number without a dot (1e-8) as text: write 1.0e-8")
        scalar = isinstance(x, (bool, str)) or is_number(x)
        if not (scalar or (isinstance(x, (list, tuple)) and x and all(is_number(e) for e in x))):
            raise bad(f"{where}.{k}", x, "a number, a boolean, a string or a list of numbers")
    return _pairs(v)


def build_optimizer(params: Any, name: str, lr: float, momentum: float, weight_decay: float,
                    options: dict[str, Any]) -> Any:
    """The optimizer ``name`` (as :func:`optimizer_name` keeps it) over ``params``: sgd and
    nesterov are ``SGD(lr, momentum, weight_decay, nesterov)``; adamw and every other class get
    ``lr`` and ``weight_decay`` (where the class takes one); all get ``options``."""
    import torch

    cls = {"sgd": torch.optim.SGD, "nesterov": torch.optim.SGD, "adamw": torch.optim.AdamW}.get(name) \
        or getattr(torch.optim, name)
    kw: dict[str, Any] = {"lr": lr}
    if name in ("sgd", "nesterov"):
        kw.update(momentum=momentum, nesterov=name == "nesterov")
    if "weight_decay" in inspect.signature(cls.__init__).parameters:
        kw["weight_decay"] = weight_decay
    return cls(params, **kw, **options)


def check_optimizer(where: str, name: str, opts: Pairs, lr: float, momentum: float, weight_decay: float) -> None:
    """Build the optimizer once on a stand-in parameter: an option its class does not take, or a
    value it refuses, is a one-line error now rather than a traceback in a trial. sgd, nesterov and
    adamw without options take every lr, momentum and weight decay the spec accepts: not built (the
    first optimizer a process builds imports torch._dynamo, seconds that a spec check need not pay)."""
    if name == "nesterov" and momentum == 0:
        raise bad(f"{where}.momentum", momentum, "a number in (0.0, 1.0) with nesterov", "Nesterov needs momentum")
    if name in OPTIMIZERS and not opts:
        return
    import torch

    if name not in OPTIMIZERS and weight_decay and \
            "weight_decay" not in inspect.signature(getattr(torch.optim, name).__init__).parameters:
        raise bad(f"{where}.weight_decay", weight_decay, f"0 with {name}", f"{name} takes no weight decay")
    try:
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], name, lr, momentum, weight_decay, dict(opts))
    except Exception as e:  # noqa: BLE001 (TypeError: an unknown option; ValueError: a value out of range)
        detail = clip((str(e).strip().splitlines() or [type(e).__name__])[0], MAX_TEXT)
        cls = {"sgd": "SGD", "nesterov": "SGD", "adamw": "AdamW"}.get(name, name)
        raise bad(f"{where}.{OPTS}", {k: _listed(x) for k, x in opts}, f"the keyword arguments of torch.optim.{cls}",
                  f"{name} refused them: {detail}") from None


def _pairs(d: dict[str, Any]) -> Pairs:
    """A mapping of options as sorted pairs, lists as tuples (hashable, as a frozen config is)."""
    return tuple(sorted((k, tuple(x) if isinstance(x, (list, tuple)) else x) for k, x in d.items()))


def _is_float_text(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


def _listed(x: Any) -> Any:
    return list(x) if isinstance(x, tuple) else x


def check_compile(where: str, v: Any) -> bool | str:
    """false, true (inductor's default mode), one of :data:`COMPILE_MODES`, or a dynamo backend.
    The words "true"/"false" (a quoted YAML value, a command-line flag) mean the booleans."""
    v = {"true": True, "false": False}.get(v, v) if isinstance(v, str) else v
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v in COMPILE_MODES:
        return v
    import torch._dynamo  # only when asked for: the import takes a second or two

    # the default backends, plus the two debugging ones that tell a compiler fault from a model's
    return need_choice(where, v, ["true", "false", *COMPILE_MODES, *torch._dynamo.list_backends(), "eager",
                                  "aot_eager"])
