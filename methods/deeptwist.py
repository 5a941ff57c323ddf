"""``deeptwist``: learning low-rank approximation without a decomposed structure (Lee, Kwon, Kim,
Wei, arXiv 1905.10145). The *dense* network trains; every ``period`` steps (200 in the paper)
each chosen weight is replaced by its low-rank reconstruction (2-D SVD of the im2col-lowered
matrix, the ``channel`` scheme, at ``rule``); at the end the network is decomposed once with
``export`` (default: the same rule), no fine-tuning.

Tiling (``tiles`` > 1, channel scheme) splits the lowered ``N x (C*kh*kw)`` matrix column-wise
into ``tiles`` tiles along input-channel groups and approximates each tile at the same rule, as
the paper does; the export keeps the tiles (a grouped ``C -> tiles*r`` conv, then 1x1
``tiles*r -> N``; see ``lowrank.factorize``). A layer whose input channels ``tiles`` does not
divide is handled untiled, and its report says ``tiles: 1``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from rankbench.bench.checks import is_int
from rankbench.methods import lowrank
from rankbench.methods.api.base import Context, Method, MethodReport, check_param
from rankbench.methods.api.registry import register


@register("deeptwist")
class DeepTwist(Method):
    """Dense training with low-rank replacement every `period` steps (optionally tiled), decomposed at the end."""

    choices = {"scheme": lowrank.SCHEMES}

    def __init__(self, period: int = 200, scheme: str = "channel", rule: str = "energy:0.9", tiles: int = 1,
                 export: Optional[str] = None, layers: str = "official", include_stride2: bool = True) -> None:
        check_param("period", period, is_int(period) and period >= 1,
                    "an int >= 1 (200 in the paper; 100-5000 reasonable)")
        check_param("scheme", scheme, scheme in lowrank.SCHEMES, ", ".join(lowrank.SCHEMES))
        check_param("rule", rule, not lowrank.parse_rule(rule, "rule").is_global,
                    "a per-layer rule: energy, value, ratio, rank or entropy (speedup only as export)")
        lowrank.check_tiles(scheme, tiles)
        if export is not None:
            lowrank.parse_rule(export, "export")
        check_param("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        check_param("include_stride2", include_stride2, isinstance(include_stride2, bool), "true or false")
        self.period, self.scheme, self.rule, self.tiles = period, scheme, rule, tiles
        self.export = export if export is not None else rule
        self.layers, self.include_stride2 = layers, include_stride2
        self.names: list[str] = []
        self._tiles: list[int] = []
        self._reports: list[lowrank.LayerReport] = []

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.names = [n for n, r in lowrank.layer_choice(model, self.scheme, self.layers, self.include_stride2)
                      if r is None]
        self._tiles = [lowrank.layer_tiles(model.get_submodule(n), self.scheme, self.tiles) for n in self.names]
        lowrank.check_reachable(model, self.scheme, self.export, self.example_input(model), self.layers,
                                self.include_stride2, self.tiles, field="export")

    def before_step(self, model: nn.Module, step: int) -> None:
        # The replacement happens after every `period` steps of dense training, never at step 0:
        # the paper trains first, then distorts.
        if step == 0 or step % self.period != 0 or not self.names:
            return
        weights = [model.get_submodule(n).weight for n in self.names]
        with torch.no_grad():
            for w, p in zip(weights, self.replace(weights)):
                w.copy_(p)

    def replace(self, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        """Low-rank reconstructions of ``weights`` (per tile when ``tiles`` > 1), batched over layers."""
        return lowrank.project(weights, self.scheme, self.rule, with_subgradient=False, tiles=self._tiles)[0]

    def choose_layers(self, model: nn.Module) -> list[tuple[str, Optional[str]]]:
        """The layers compress() factorizes (None) or why each stays dense."""
        return lowrank.layer_choice(model, self.scheme, self.layers, self.include_stride2)

    def compress(self, model: nn.Module) -> nn.Module:
        small, self._reports = lowrank.decompose_model(
            model, self.scheme, self.export, self.layers, example_input=self.example_input(model),
            include_stride2=self.include_stride2, tiles=self.tiles)
        return small

    def report(self) -> MethodReport:
        return MethodReport(layers=list(self._reports), scheme=self.scheme, rule=self.export)
