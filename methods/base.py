"""The Method API: what a compression method implements to take part in a benchmark.

A method is a small class registered under a name (see ``methods.registry``). The harness
(``bench.train``) builds one instance per trial from the spec's parameters and calls its
hooks around the ordinary training loop::

    method = get_method(name)(**params)        # bad parameter -> ValueError naming it
    method.attach(model, ctx)                  # once, before training
    for step, batch in ...:
        method.before_step(model, step)        # e.g. TRP projection, DeepTwist replacement
        loss.backward()
        method.after_backward(model, step)     # e.g. nuclear-norm sub-gradient
        optimizer.step()
    small = method.compress(model)             # the deployable (factorized) model
    # optional fine-tuning of ``small`` for ``method.finetune_epochs`` epochs

Every hook has a do-nothing default, so a method overrides only what it needs.
Constructor keyword arguments *are* the method's parameters: the registry reads their names,
defaults and annotations for ``rankbench methods`` and for spec validation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn


@dataclass
class Context:
    """What the harness tells a method about the trial it runs in."""

    input_shape: tuple[int, ...]          # one example, no batch dim, e.g. (3, 32, 32)
    num_classes: int
    steps_per_epoch: int
    epochs: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    log: Callable[[str], None] = print
    train_batches: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]] | None = None  # n training batches, on device

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros((batch, *self.input_shape), device=self.device)


@dataclass
class MethodReport:
    """What ``report()`` returns: the result row's ``layers``, ``scheme``, ``rule`` and ``method_info``."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    scheme: str | None = None
    rule: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def check_param(name: str, value: Any, ok: bool, accepted: str) -> None:
    """Raise the one-line error every method uses for a bad constructor value."""
    if not ok:
        raise ValueError(f"{name}: got {value!r}; accepted {accepted}")


class Method:
    """Base class of every compression method. Subclasses set ``name`` via ``@register``."""

    name: ClassVar[str] = ""
    # True: the harness trains (or reuses) the dense baseline and hands it to attach();
    # the method's own training epochs are then 0 and only ``finetune_epochs`` run after compress.
    starts_from_baseline: ClassVar[bool] = False
    finetune_epochs: int = 0

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Pick layers and build state. Must not change ``model``'s forward."""
        self.ctx = ctx

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called before each forward pass during training (``step`` counts from 0)."""

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Called after ``loss.backward()`` and before ``optimizer.step()``."""

    def compress(self, model: nn.Module) -> nn.Module:
        """Return the model that is deployed and measured (may be ``model`` itself)."""
        return model

    def example_input(self, model: nn.Module) -> torch.Tensor:
        """One example batch (from the Context given to attach) on ``model``'s device: what
        compress() needs to count MACs and to hit a ``speedup:`` rule."""
        ctx = getattr(self, "ctx", None)
        if ctx is None:
            raise RuntimeError(f"{self.name or type(self).__name__}: compress() needs the trial context; "
                               "call attach(model, ctx) first")
        x = ctx.example_input()
        p = next(model.parameters(), None)
        return x.to(p.device) if p is not None else x

    def report(self) -> dict[str, Any]:
        """Per-trial facts for the result row, e.g. ``{"layers": [...], "skipped": [...]}``."""
        return {}
