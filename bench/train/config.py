"""The options a trial trains with, as one frozen object: ``TrainConfig``.

The spec's ``train:`` mapping is checked and completed here once (:meth:`TrainConfig.parse`);
the trial stores its :meth:`~TrainConfig.id_form` (every key, except the ones that were added
after the first sweeps ran and are at their default: ``sync_bn``, ``compile``), so a trial's id
is what it always was; the runner reads the object back (:meth:`TrainConfig.of`).

A phase of a trial (training, then fine-tuning after compression) trains with the same options
at its own length and learning rate: :class:`Phase`.

May import: ``rankbench.bench.checks`` only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rankbench.bench.checks import (bad, check_keys, is_int, need_bool, need_choice, need_float,
                                    need_int)

SCHEDULES = ("cosine", "step")
# what train.compile takes besides true/false: torch.compile's modes (inductor) ...
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# left out of the id form while at their default, so the trials of older specs keep their ids
ID_OPTIONAL = ("sync_bn", "compile")


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
        return cls(**out, milestones=tuple(int(m) for m in ms), compile=check_compile(f"{where}.compile", v["compile"]))

    def id_form(self) -> dict[str, Any]:
        """The mapping a Trial stores and hashes: every option, less the :data:`ID_OPTIONAL` ones
        at their default."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return {k: v for k, v in d.items() if k not in ID_OPTIONAL or v}

    @classmethod
    def from_id_form(cls, d: dict[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`id_form` (values as a Trial stores them)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in d.items() if k in known}
        if "milestones" in kept:
            kept["milestones"] = tuple(kept["milestones"])
        return cls(**kept)

    @classmethod
    def of(cls, trial: Any) -> "TrainConfig":
        """A ``rankbench.bench.trial.Trial``'s training options."""
        return cls.from_id_form(trial.train_cfg)

    def train_phase(self) -> "Phase":
        """The training phase: ``epochs`` at ``lr``. Fine-tuning phases are made by the runner
        with :class:`Phase` directly (their length is the method's, their lr ``finetune_lr``)."""
        return Phase(name="train", epochs=self.epochs, lr=self.lr)


@dataclass(frozen=True)
class Phase:
    """One call of the training loop: its name (checkpoints hold it, so a resume finds the
    phase it was in), its length and learning rate, and where its epochs count from in the
    trial (``epoch_offset``: fine-tuning's epochs follow training's)."""

    name: str
    epochs: int
    lr: float
    epoch_offset: int = 0


def defaults() -> dict[str, Any]:
    """The spec's ``train`` defaults, as YAML would write them."""
    d = dataclasses.asdict(TrainConfig())
    d["milestones"] = []
    return d


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
