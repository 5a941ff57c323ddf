"""``arsvd``: adaptive-rank SVD (Cherukuri & Lala, arXiv 2504.20078). Starts from the trained
baseline; each chosen layer (every Linear by default; convs through a conv scheme) gets its own
rank from an energy (v1) or spectral-entropy (v2) threshold and becomes two smaller layers.
The paper reports accuracy and macro F1 (the harness computes F1 for every trial); no
fine-tuning is indicated (``finetune_epochs`` makes it optional)."""
from __future__ import annotations

from typing import Optional

from torch import nn

from rankbench.bench.checks import is_int
from rankbench.methods import lowrank
from rankbench.methods.api.base import Method, MethodReport, check_param
from rankbench.methods.api.registry import register


@register("arsvd")
class ARSVD(Method):
    """Adaptive-rank SVD of a trained network: per-layer rank by energy (v1) or spectral entropy (v2)."""

    choices = {"scheme": lowrank.SCHEMES}
    starts_from_baseline = True

    def __init__(self, rule: str = "energy:0.9", scheme: str = "linear", finetune_epochs: int = 0,
                 layers: str = "official") -> None:
        parsed = lowrank.parse_rule(rule)
        check_param("rule", rule, parsed.kind in ("energy", "entropy"),
                    '"energy:E" (v1) or "entropy:TAU" (v2), 0 < E, TAU <= 1')
        check_param("scheme", scheme, scheme in lowrank.SCHEMES, ", ".join(lowrank.SCHEMES))
        check_param("finetune_epochs", finetune_epochs,
                    is_int(finetune_epochs) and finetune_epochs >= 0,
                    "an int >= 0")
        check_param("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        self.rule, self.scheme, self.finetune_epochs, self.layers = rule, scheme, finetune_epochs, layers
        self._reports: list[lowrank.LayerReport] = []

    def choose_layers(self, model: nn.Module) -> list[tuple[str, Optional[str]]]:
        """The layers compress() factorizes (None) or why each stays dense."""
        return lowrank.layer_choice(model, self.scheme, self.layers)

    def compress(self, model: nn.Module) -> nn.Module:
        small, self._reports = lowrank.decompose_model(model, self.scheme, self.rule, self.layers,
                                                       example_input=self.example_input(model))
        return small

    def report(self) -> MethodReport:
        # the paper's table reports accuracy and macro F1
        return MethodReport(layers=list(self._reports), scheme=self.scheme, rule=self.rule,
                            info={"metrics": ["top1", "f1"]})
