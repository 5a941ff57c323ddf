"""``svd``: pretrain-then-decompose. The harness hands over the trained dense baseline; every
chosen layer is decomposed under ``scheme`` at the rank ``rule`` gives; then ``finetune_epochs``
epochs of fine-tuning (0 = "decompose, no fine-tuning", k = "decompose + fine-tune").

Also here: ``DataDriven``, the skeleton of the data-driven decompositions (``zhang``,
``jaderberg``): decompose as ``svd`` does, then refit every factorized layer to statistics of the
dense model's responses on calibration batches (``rankbench.methods.api.calibration``). The ranks
come from ``lowrank.decompose_model`` under the method's scheme and rule (so every rule,
``speedup:S`` included, means what it means for ``svd``, on the MAC count the result row
reports), read from the spectra :meth:`DataDriven.rank_spectra` gives (``zhang``: its responses'
PCA energies, as the papers choose ranks) or else from the weights'; the data then sets the
factors' weights, never the structure, so the MAC count is the plan's. Statistics are
accumulated in float64.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from rankbench.bench.checks import is_int
from rankbench.methods import lowrank
from rankbench.methods.api.base import Context, Method, MethodReport, check_param
from rankbench.methods.api.calibration import Collector, collect
from rankbench.methods.api.registry import register


@register("svd")
class SVD(Method):
    """Decompose the trained baseline at a rank rule (speedup:S to match cost), then optionally fine-tune."""

    choices = {"scheme": lowrank.SCHEMES}
    starts_from_baseline = True

    def __init__(self, scheme: str = "channel", rule: str = "energy:0.9", finetune_epochs: int = 0,
                 layers: str = "official", include_stride2: bool = True) -> None:
        check_param("scheme", scheme, scheme in lowrank.SCHEMES, ", ".join(lowrank.SCHEMES))
        lowrank.parse_rule(rule)
        check_param("finetune_epochs", finetune_epochs,
                    is_int(finetune_epochs) and finetune_epochs >= 0,
                    "an int >= 0")
        check_param("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        check_param("include_stride2", include_stride2, isinstance(include_stride2, bool), "true or false")
        self.scheme, self.rule, self.finetune_epochs = scheme, rule, finetune_epochs
        self.layers, self.include_stride2 = layers, include_stride2
        self._reports: list[lowrank.LayerReport] = []

    def attach(self, model: nn.Module, ctx: Context) -> None:
        lowrank.check_reachable(model, self.scheme, self.rule, self.example_input(model), self.layers,
                                self.include_stride2)

    def choose_layers(self, model: nn.Module) -> list[tuple[str, Optional[str]]]:
        """The layers compress() factorizes (None) or why each stays dense."""
        return lowrank.layer_choice(model, self.scheme, self.layers, self.include_stride2)

    def compress(self, model: nn.Module) -> nn.Module:
        return self.decompose(model)

    def decompose(self, model: nn.Module, spectra: Optional[Mapping[str, Tensor]] = None,
                  allocation: str = "threshold") -> nn.Module:
        """``lowrank.decompose_model`` under this method's scheme, rule and layers (``spectra``
        and ``allocation``: what a subclass reads the ranks from); keeps the reports."""
        small, self._reports = lowrank.decompose_model(
            model, self.scheme, self.rule, self.layers, example_input=self.example_input(model),
            include_stride2=self.include_stride2, spectra=spectra, allocation=allocation)
        return small

    def report(self) -> MethodReport:
        return MethodReport(layers=list(self._reports), scheme=self.scheme, rule=self.rule)


class DataDriven(SVD):
    """Base of the data-driven decompositions: decompose like ``svd`` (scheme :attr:`scheme`,
    same layers, ranks and reachability check), then gather statistics on ``calibration``
    training batches and refit every factorized layer.

    A subclass sets :attr:`scheme` and implements :meth:`collector` and :meth:`refit`."""

    scheme: str = "channel"
    allocation: str = "threshold"              # how a speedup: rule shares the MACs (lowrank.decompose_model)
    choices: dict[str, tuple[str, ...]] = {}   # the scheme is the method's, not a parameter

    def __init__(self, rule: str = "speedup:2.0", calibration: int = 8, finetune_epochs: int = 0,
                 layers: str = "official", include_stride2: bool = True) -> None:
        super().__init__(self.scheme, rule, finetune_epochs, layers, include_stride2)
        check_param("calibration", calibration, is_int(calibration) and calibration >= 1,
                    "an int >= 1 (training batches whose responses the fit uses)")
        self.calibration, self.finetune_epochs = int(calibration), int(finetune_epochs)
        self._fit: dict[str, dict[str, float]] = {}
        self._read = 0    # calibration batches the last compress() read (the split may hold fewer than asked)

    def compress(self, model: nn.Module) -> nn.Module:
        chosen = [n for n, why in self.choose_layers(model) if why is None]
        stats: dict[str, Any] = {}
        self._read = 0
        if chosen:
            batches = self.calibration_batches(self.calibration)
            self._read = len(batches)
            collect(model, chosen, batches, self.collector(stats))
        small = self.decompose(model, self.rank_spectra(model, stats), self.allocation)
        self._fit = {}
        for rep in self._reports:
            if rep["skipped"] is None and rep["rank"] is not None:
                with torch.no_grad():
                    self._fit[rep["name"]] = self.refit(model.get_submodule(rep["name"]),
                                                        small.get_submodule(rep["name"]), stats[rep["name"]])
        return small

    def collector(self, stats: dict[str, Any]) -> Collector:
        """A :data:`Collector` that accumulates per-layer statistics into ``stats[name]``."""
        raise NotImplementedError

    def rank_spectra(self, model: nn.Module, stats: dict[str, Any]) -> Optional[dict[str, Tensor]]:
        """Per layer, the spectrum the rank rule reads (``lowrank.decompose_model``'s ``spectra``);
        None: the weights' singular values, as ``svd``."""
        return None

    def refit(self, dense: nn.Module, fact: lowrank.Factorized, stats: Any) -> dict[str, float]:
        """Set ``fact``'s weights (in place) from the layer's statistics; return facts for the report."""
        raise NotImplementedError

    def report(self) -> MethodReport:
        report = super().report()
        # the batches read, not the ``calibration`` asked for: the harness gives at most one epoch
        report.info = {"calibration_batches": self._read, "fit": dict(self._fit)}
        return report
