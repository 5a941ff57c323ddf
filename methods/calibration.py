"""What the data-driven decompositions (``zhang``, ``jaderberg``) share: statistics of chosen
layers' inputs or outputs on calibration batches of the training split, and the method skeleton
that plans ranks with ``methods.lowrank`` and then refits each factorized layer to the data.

The ranks come from ``lowrank.decompose_model`` under the method's scheme and rule (so every rule,
``speedup:S`` included, means what it means for ``svd``, on the MAC count the result row reports),
read from the spectra :meth:`DataDriven.rank_spectra` gives (``zhang``: its responses' PCA
energies, as the papers choose ranks) or else from the weights'; the data then sets the factors'
weights, never the structure, so the MAC count is the plan's. Statistics are gathered on the
dense model (the original network's responses), in eval mode (no BN update) and without
gradients, accumulated in float64, in one pass over the calibration batches.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from bench.checks import is_int
from methods import lowrank
from methods.base import MethodReport, check_param
from methods.svd import SVD

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

    def compress(self, model: nn.Module) -> nn.Module:
        chosen = [n for n, why in self.choose_layers(model) if why is None]
        stats: dict[str, Any] = {}
        if chosen:
            collect(model, chosen, self.calibration_batches(self.calibration), self.collector(stats))
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
        report.info = {"calibration_batches": self.calibration, "fit": dict(self._fit)}
        return report
