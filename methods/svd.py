"""``svd``: pretrain-then-decompose. The harness hands over the trained dense baseline; every
chosen layer is decomposed under ``scheme`` at the rank ``rule`` gives; then ``finetune_epochs``
epochs of fine-tuning (0 = "decompose, no fine-tuning", k = "decompose + fine-tune")."""
from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor, nn

from bench.checks import is_int
from methods import lowrank
from methods.base import Context, Method, MethodReport, check_param
from methods.registry import register


@register("svd")
class SVD(Method):
    """Decompose the trained baseline at a rank rule (speedup:S to match cost), then optionally fine-tune."""

    name = "svd"
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

