"""``trp``: Trained Rank Pruning (Xu et al., arXiv 1812.02402), as the official code runs it.

Every ``period`` steps, before the forward pass, each chosen layer's weight is replaced by its
rank-r reconstruction (r by the energy rule, 0.9) through the batched, sync-free
``lowrank.project``; with ``nuclear`` > 0 the nuclear-norm sub-gradient is added to the gradient
on the same steps (``grad += nuclear * U_r V_r^T``). ``solver`` picks how the projection is
computed: ``auto`` (default: the Gram-matrix eigensolver where a layer's matrix is at least 2x
wider than tall, else the exact SVD), ``gram``, ``svd``, or ``warm`` (the Gram solver started from
the previous step's factors: a couple of matrix products and a small eigensolve while its check
holds, the full eigensolve otherwise; the row's ``method_info.warm_start`` counts both, and
the warm factors are the method's ``state_dict``, so a resumed run starts warm); all keep the
exact ranks and agree with a float64 SVD to float32 rounding (tests/methods/test_lowrank_solvers.py,
BENCHMARKS.md). After training the chosen layers are decomposed with the ``export`` rule
(value 0.05 by default), no fine-tuning.

Ablations: ``project=False`` is "Nu without TRP" (only the nuclear-norm term; the weight is not
projected, so the sub-gradient is the full ``U V^T`` of ``||W||_*``, as the official nuclear
regularization script computes it); ``nuclear=0`` is "TRP without Nu".
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from bench.checks import is_int, is_number
from methods import lowrank
from methods.base import Context, Method, MethodReport, check_param
from methods.registry import register

TRP_SCHEMES = ("channel", "spatial", "decoupling")


@register("trp")
class TRP(Method):
    """Trained Rank Pruning: low-rank projection during training (+ nuclear norm), decomposed at export."""

    name = "trp"

    def __init__(self, scheme: str = "channel", period: int = 1, energy: float = 0.9, nuclear: float = 0.0,
                 project: bool = True, export: str = "value:0.05", layers: str = "official",
                 include_stride2: bool = True, solver: str = "auto") -> None:
        check_param("scheme", scheme, scheme in TRP_SCHEMES, ", ".join(TRP_SCHEMES))
        check_param("period", period, is_int(period) and period >= 1,
                    "an int >= 1")
        check_param("energy", energy, is_number(energy) and 0 < energy <= 1, "a number in (0, 1]")
        check_param("nuclear", nuclear, is_number(nuclear) and nuclear >= 0,
                    "a number >= 0 (0 = off; 3e-4 in the paper)")
        check_param("project", project, isinstance(project, bool), "true or false")
        lowrank.parse_rule(export, "export")
        check_param("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        check_param("include_stride2", include_stride2, isinstance(include_stride2, bool), "true or false")
        lowrank.check_solver(solver)
        self.scheme, self.period, self.energy, self.nuclear = scheme, period, float(energy), float(nuclear)
        self.project, self.export, self.layers, self.include_stride2 = project, export, layers, include_stride2
        self.solver = solver
        self.names: list[str] = []
        self._subgrads: Optional[list[Tensor]] = None
        self._subgrad_step = -1
        self._reports: list[lowrank.LayerReport] = []
        self._warm = lowrank.WarmStart()   # solver "warm": the previous step's factors

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.names = [n for n, r in lowrank.layer_choice(model, self.scheme, self.layers, self.include_stride2)
                      if r is None]
        # an unreachable speedup export would only fail after training: fail now
        lowrank.check_reachable(model, self.scheme, self.export, self.example_input(model), self.layers,
                                self.include_stride2, field="export")

    def _active(self, step: int) -> bool:
        return step % self.period == 0 and (self.project or self.nuclear > 0) and bool(self.names)

    def before_step(self, model: nn.Module, step: int) -> None:
        if not self._active(step):
            return
        weights = [model.get_submodule(n).weight for n in self.names]
        # Projected: the sub-gradient of the rank-r weight is U_r V_r^T; unprojected: all of U V^T.
        rule = lowrank.Rule("energy", self.energy) if self.project else lowrank.Rule("ratio", 1.0)
        with torch.no_grad():
            projected, subgrads = lowrank.project(weights, self.scheme, rule, with_subgradient=self.nuclear > 0,
                                                  solver=self.solver, state=self._warm)
            if self.project:
                for w, p in zip(weights, projected):
                    w.copy_(p)
        self._subgrads, self._subgrad_step = (subgrads, step) if self.nuclear > 0 else (None, -1)

    def after_backward(self, model: nn.Module, step: int) -> None:
        if self._subgrads is None or step != self._subgrad_step:
            return
        with torch.no_grad():
            for n, g in zip(self.names, self._subgrads):
                w = model.get_submodule(n).weight
                if w.grad is None:
                    w.grad = self.nuclear * g
                else:
                    w.grad.add_(g, alpha=self.nuclear)
        self._subgrads = None

    def compress(self, model: nn.Module) -> nn.Module:
        small, self._reports = lowrank.decompose_model(
            model, self.scheme, self.export, self.layers, example_input=self.example_input(model),
            include_stride2=self.include_stride2)
        return small

    def report(self) -> MethodReport:
        info: dict[str, Any] = {}
        if self.solver == "warm":  # how often the warm start held, in shape-group projections since start
            info["warm_start"] = {"warm": self._warm.warm, "cold": self._warm.cold}
        return MethodReport(layers=list(self._reports), scheme=self.scheme, rule=self.export, info=info)

    def state_dict(self) -> dict[str, Any]:
        """The warm solver's factors and counts, so a resumed run starts warm where it stopped."""
        return {"warm": self._warm.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "warm" in state:
            self._warm.load_state_dict(state["warm"])
