"""What the data-driven decompositions (``zhang``, ``jaderberg``) share: statistics of chosen
layers' inputs or outputs on calibration batches of the training split, and the method skeleton
that plans ranks with ``methods.lowrank`` and then refits each factorized layer to the data.

The ranks come from ``lowrank.decompose_model`` under the method's scheme and rule (so every rule,
``speedup:S`` included, means what it means for ``svd``, on the MAC count the result row reports);
the data only changes the factors' weights, never the structure, so the MAC count is the plan's.
Statistics are gathered on the dense model (the original network's responses), in eval mode
(no BN update) and without gradients, accumulated in float64.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from bench.checks import is_int
from methods import lowrank
from methods.base import Context, Method, MethodReport, check_param

# called per chosen layer and calibration batch: (layer name, layer, its input, its output)
Collector = Callable[[str, nn.Module, Tensor, Tensor], None]


def collect(model: nn.Module, names: Sequence[str], batches: Sequence[tuple[Tensor, Tensor]],
            collector: Collector) -> None:
    """Run ``batches`` through ``model`` (eval mode, no grad) and hand every named layer's input
    and output to ``collector``; every module's train/eval mode is restored after."""
    modes = {m: m.training for m in model.modules()}
    hooks = []
    for name in names:
        def hook(mod: nn.Module, inp: tuple, out: Tensor, name: str = name) -> None:
            collector(name, mod, inp[0], out)
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    model.eval()
    try:
        p = next(model.parameters(), None)
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(p.device) if p is not None else x)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode


class DataDriven(Method):
    """Base of the data-driven decompositions: plan ranks like ``svd`` (scheme :attr:`scheme`),
    gather statistics on ``calibration`` training batches, refit every factorized layer.

    A subclass sets :attr:`scheme` and implements :meth:`collector` and :meth:`refit`."""

    starts_from_baseline = True
    scheme: str = "channel"

    def __init__(self, rule: str = "speedup:2.0", calibration: int = 8, finetune_epochs: int = 0,
                 layers: str = "official", include_stride2: bool = True) -> None:
        lowrank.parse_rule(rule)
        check_param("calibration", calibration, is_int(calibration) and calibration >= 1,
                    "an int >= 1 (training batches whose responses the fit uses)")
        check_param("finetune_epochs", finetune_epochs, is_int(finetune_epochs) and finetune_epochs >= 0,
                    "an int >= 0")
        check_param("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        check_param("include_stride2", include_stride2, isinstance(include_stride2, bool), "true or false")
        self.rule, self.calibration, self.finetune_epochs = rule, int(calibration), int(finetune_epochs)
        self.layers, self.include_stride2 = layers, include_stride2
        self._reports: list[lowrank.LayerReport] = []
        self._fit: dict[str, dict[str, float]] = {}

    def attach(self, model: nn.Module, ctx: Context) -> None:
        lowrank.check_reachable(model, self.scheme, self.rule, self.example_input(model), self.layers,
                                self.include_stride2)

    def choose_layers(self, model: nn.Module) -> list[tuple[str, Optional[str]]]:
        """The layers compress() factorizes and refits (None) or why each stays dense."""
        return lowrank.layer_choice(model, self.scheme, self.layers, self.include_stride2)

    def compress(self, model: nn.Module) -> nn.Module:
        small, self._reports = lowrank.decompose_model(
            model, self.scheme, self.rule, self.layers, example_input=self.example_input(model),
            include_stride2=self.include_stride2)
        names = [r["name"] for r in self._reports if r["skipped"] is None and r["rank"] is not None]
        if names:
            stats: dict[str, Any] = {}
            collect(model, names, self.calibration_batches(self.calibration), self.collector(stats))
            self._fit = {}
            for name in names:
                fact = small.get_submodule(name)
                with torch.no_grad():
                    self._fit[name] = self.refit(model.get_submodule(name), fact, stats[name])
        return small

    def collector(self, stats: dict[str, Any]) -> Collector:
        """A :data:`Collector` that accumulates per-layer statistics into ``stats[name]``."""
        raise NotImplementedError

    def refit(self, dense: nn.Module, fact: lowrank.Factorized, stats: Any) -> dict[str, float]:
        """Set ``fact``'s weights (in place) from the layer's statistics; return facts for the report."""
        raise NotImplementedError

    def report(self) -> MethodReport:
        return MethodReport(layers=list(self._reports), scheme=self.scheme, rule=self.rule,
                            info={"calibration_batches": self.calibration, "fit": dict(self._fit)})
