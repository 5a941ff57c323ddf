"""The Method API: what a compression method implements to take part in a benchmark.

A method is a small class registered under a name (see ``rankbench.methods.api.registry``). The harness
(``rankbench.bench.running.run`` with ``rankbench.bench.train.loop``) builds one instance per trial from the spec's parameters and
calls its hooks around the ordinary training loop::

    method = get_method(name)(**params)        # bad parameter -> UserError naming it
    start(method, model, ctx)                  # sets method.ctx, then method.attach(model, ctx): once,
                                               # before training (and before the optimizer exists)
    optimizer = <train.optimizer>(method.param_groups(model) or model.parameters(), ...)
    for step, batch in ...:                    # a resume first calls method.load_state_dict(saved)
        method.before_step(model, step)
        loss = cross_entropy(model(x), y) + (method.extra_loss(model, step) or 0)
        loss.backward()
        method.after_backward(model, step)
        optimizer.step()
    # every epoch: the checkpoint saves method.state_dict() with the model and optimizer, and
    # method.epoch_metrics(model) goes to TensorBoard / MLflow beside the loss and val top-1
    small = method.compress(model)             # the deployable (factorized) model
    # fine-tuning of ``small`` for ``method.finetune_epochs`` epochs (0: none): without the
    # method's hooks, unless ``hooks_in_finetune`` (then the same loop as above, on ``small``)
    row = method.report()                      # a MethodReport: per-layer facts, scheme, rule, info

Hooks, each with a do-nothing default (a method overrides only what it needs):

- ``attach(model, ctx)``: pick layers, build state; may replace layers (e.g. factorized ones) to train them.
- ``before_step(model, step)``: before each forward pass (e.g. TRP projection, DeepTwist replacement).
- ``extra_loss(model, step)``: a tensor added to the training loss (e.g. a regularizer), or None.
- ``after_backward(model, step)``: after ``loss.backward()``, before ``optimizer.step()`` (e.g. a sub-gradient).
- ``param_groups(model)``: optimizer parameter groups (e.g. no weight decay on singular values); None: one group.
- ``compress(model)``: the model that is deployed and measured (default: ``model`` itself).
- ``report()``: a :class:`MethodReport` for the result row (default: empty).
- ``epoch_metrics(model)``: scalars for the experiment trackers after each training epoch, e.g.
  ``{"mean_kept_rank": 7.5}`` (TensorBoard tag ``train/mean_kept_rank``; default: none). Called
  on rank 0 outside the step loop, so it may read values back from the device.
- ``choose_layers(model)``: every Conv2d/Linear with None (the deployed model compresses it) or
  why it stays dense, without changing ``model``; None (default): the method picks no layers.
  The spec refuses, before training, a method that would compress no layer of its model.
- ``rebuild(model, layers)``: the deployed architecture rebuilt on a dense ``model`` from the report's
  ``layers`` (weights are loaded after; default: ``lowrank.build_factorized``, which knows the
  lowrank schemes; a method with layer types of its own rebuilds them). Used to load a saved
  compressed model and by the conformance suite.
- ``state_dict()`` / ``load_state_dict(d)``: method state, checkpointed every epoch and restored on resume.

Attributes: ``name`` (the registry key), ``starts_from_baseline``, ``ctx`` (the trial's
:class:`Context`, set by the harness before ``attach``), ``finetune_epochs`` (read after compress),
``hooks_in_finetune``.

Fine-tuning after compress: by default (``hooks_in_finetune = False``) the harness fine-tunes
``small`` as a plain network: no ``before_step`` / ``extra_loss`` / ``after_backward`` /
``epoch_metrics``, one parameter group with the fine-tuning recipe's settings, and no method state
in the fine-tuning checkpoint. A method whose compressed model still needs its hooks (keep
projecting, keep a regularizer, no weight decay on its factors) sets ``hooks_in_finetune = True``:
then every hook above, ``param_groups`` and ``state_dict`` / ``load_state_dict`` are called in the
fine-tuning phase too, with ``small`` as ``model`` and ``step`` counted from 0 again; the hooks
must accept the compressed model (``ctx`` is the training's, unchanged).
Helpers for subclasses: ``example_input(model)``, ``calibration_batches(n)``.

Constructor keyword arguments *are* the method's parameters: the registry reads their names,
defaults and annotations for ``rankbench methods`` and for spec validation; ``check_param``
gives a bad value the project's one-line error. A choice parameter declares its accepted values
with a ``Literal[...]`` annotation or in the class's ``choices`` dict; the registry rejects any
other value and ``rankbench methods`` lists them (``solver: auto|svd|gram|warm``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from rankbench.bench import checks
from rankbench.methods.lowrank import LayerReport, build_factorized


@dataclass
class Context:
    """What the harness tells a method about the trial it runs in."""

    input_shape: tuple[int, ...]          # one example, no batch dim, e.g. (3, 32, 32)
    num_classes: int
    steps_per_epoch: int
    epochs: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    log: Callable[[str], None] = print
    # n batches of the training split on the trial's device, without augmentation (calibration data)
    train_batches: Callable[[int], list[tuple[Tensor, Tensor]]] | None = None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros((batch, *self.input_shape), device=self.device)


@dataclass
class MethodReport:
    """What a method tells the result row after compress."""

    layers: list[LayerReport] = field(default_factory=list)   # per-layer facts, skipped layers included (their `skipped` reason set)
    scheme: str | None = None
    rule: str | None = None        # the export rank rule actually used
    info: dict[str, Any] = field(default_factory=dict)   # anything else -> the row's method_info


def start(method: "Method", model: nn.Module, ctx: Context) -> None:
    """What the harness does before training: set ``method.ctx``, then ``method.attach(model, ctx)``."""
    method.ctx = ctx
    method.attach(model, ctx)


def check_param(name: str, value: Any, ok: bool, accepted: str) -> None:
    """Raise the project's one-line error (``rankbench.bench.checks``) for a bad constructor value:
    ``<name>: <value>; accepted: <accepted>``."""
    checks.check(name, value, ok, accepted)


class Method:
    """Base class of every compression method; ``@register("key")`` names it (see ``rankbench.methods.api.registry``)."""

    name: ClassVar[str] = ""
    # True: the harness trains (or reuses) the dense baseline and hands it to attach();
    # the method's own training epochs are then 0 and only ``finetune_epochs`` run after compress.
    starts_from_baseline: ClassVar[bool] = False
    # True for the one method every speed-up is measured against (``dense``); its trials are
    # the baselines others start from (``rankbench.bench.trial.BASELINE`` names its key)
    is_baseline: ClassVar[bool] = False
    # the trial's context: set by the harness before attach(); None until then
    ctx: Context | None = None
    # epochs of fine-tuning after compress; a method that takes it as a parameter sets it in __init__
    finetune_epochs: int = 0
    # True: fine-tuning after compress calls this method's hooks, param_groups and state_dict on
    # the compressed model; False (default): fine-tuning trains the compressed model without them
    hooks_in_finetune: ClassVar[bool] = False
    # accepted values of choice parameters not annotated Literal[...], e.g. {"solver": ("auto", "svd")}
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def attach(self, model: nn.Module, ctx: Context) -> None:
        """Pick layers and build state, once before training. May replace layers of ``model``
        (e.g. by factorized ones) to train them: the optimizer is built after attach."""

    def before_step(self, model: nn.Module, step: int) -> None:
        """Called before each forward pass during training (``step`` counts from 0)."""

    def extra_loss(self, model: nn.Module, step: int) -> Tensor | None:
        """A term added to the training loss at ``step`` (e.g. a regularizer), or None."""
        return None

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Called after ``loss.backward()`` and before ``optimizer.step()``."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups (``torch.optim`` style dicts, e.g. ``{"params": [...],
        "weight_decay": 0.0}``), covering every trained parameter; None: all of ``model``'s
        parameters in one group with the spec's settings."""
        return None

    def compress(self, model: nn.Module) -> nn.Module:
        """Return the model that is deployed and measured (may be ``model`` itself)."""
        return model

    def report(self) -> MethodReport:
        """Per-trial facts for the result row."""
        return MethodReport()

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Scalars to track after each training epoch (name -> number); {} by default."""
        return {}

    def choose_layers(self, model: nn.Module) -> list[tuple[str, str | None]] | None:
        """Every Conv2d/Linear of ``model`` with None (compressed in the deployed model) or the
        reason it stays dense; ``model`` may live on the meta device (no weights). None: this
        method does not pick layers (e.g. dense), so there is nothing to check."""
        return None

    def rebuild(self, model: nn.Module, layers: Sequence[LayerReport]) -> nn.Module:
        """The deployed architecture for ``layers`` (a report's), built on the dense ``model``."""
        return build_factorized(model, layers)

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a resume (saved with every epoch checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (called after attach, before training resumes)."""

    def example_input(self, model: nn.Module) -> torch.Tensor:
        """One example batch (from ``ctx``) on ``model``'s device and in its floating dtype (a
        float64 model gets a float64 batch): what compress() needs to count MACs and to hit a
        ``speedup:`` rule."""
        x = self._context("example_input").example_input()
        p = next(model.parameters(), None)
        if p is None:
            return x
        return x.to(p.device, p.dtype) if p.is_floating_point() else x.to(p.device)

    def calibration_batches(self, n: int) -> list[tuple[Tensor, Tensor]]:
        """At most ``n`` batches ``(x, y)`` of the training split on the trial's device, no
        augmentation: the harness gives at most one epoch, so a small split gives fewer than
        ``n``. What a method reports as read is ``len()`` of this list, not ``n``."""
        checks.check("calibration_batches", n, checks.is_int(n) and n >= 1, "an int >= 1")
        ctx = self._context("calibration_batches")
        if ctx.train_batches is None:
            raise RuntimeError(f"{self._label()}: calibration_batches() needs training data, and this "
                               "trial's context has none (Context.train_batches is None)")
        return list(ctx.train_batches(n))[:n]

    def _label(self) -> str:
        return self.name or type(self).__name__

    def _context(self, what: str) -> Context:
        if self.ctx is None:
            raise RuntimeError(f"{self._label()}: {what}() needs the trial context; the harness sets "
                               "method.ctx before attach(model, ctx) (set it by hand outside the harness)")
        return self.ctx
