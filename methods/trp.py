"""``trp``: Trained Rank Pruning (Xu et al., arXiv 1812.02402), as the official code runs it.

Every ``period`` steps, before the forward pass, each chosen layer's weight is replaced by its
rank-r reconstruction (r by the energy rule, 0.9) through the batched, sync-free
``lowrank.project``; with ``nuclear`` > 0 the nuclear-norm sub-gradient is added to the gradient
on the same steps (``grad += nuclear * U_r V_r^T``). ``solver`` picks how the projection is
computed: ``auto`` (default: on the CPU started from the previous step's factors, a few
matrix products and a small eigensolve whose answer is certified; where the certificate fails,
on the first step, and on a GPU until the warm path is measured there, the full solve: the
Gram-matrix eigensolver where a layer's matrix is at least 2x wider than tall, else the exact
SVD), ``warm`` (the warm start on any device, falling back to the Gram eigensolver), ``gram``,
or ``svd``. The row's ``method_info.warm_start`` counts warm and full
solves, and the warm factors are the method's ``state_dict``, so a resumed run starts warm; all
keep the exact ranks and agree with a float64 SVD as closely as the float32 SVD does
(tests/methods/test_lowrank_solvers.py, BENCHMARKS.md). After training the chosen layers are
decomposed with the ``export`` rule (value 0.05 by default), no fine-tuning.

Which layers (``layers: official``, the default, as the official ``cifar-TRP.py`` / ``decompose.py``):
every conv larger than 1x1 except the network's first is projected during training, stride-2
convs included; with ``scheme: linear``, every ``nn.Linear`` (a transformer's layers) instead.
``stride2`` says what happens to the stride-2 ones:

- ``official`` (default): projected in training; at export the channel and spatial schemes leave
  them dense (``decompose.py`` factorizes only ``stride == (1, 1)``), while network decoupling
  factorizes every chosen layer, as ``network_decouple`` does. As in the official code, every
  layer chosen for export is factorized even where that costs more MACs than dense (decoupling's
  stride-2 convs always do; a ``speedup:`` export, which the official code does not have, keeps
  such a layer dense, as its search assumes). The official MAC formula counts stride-2 layers as dense in every
  scheme: the layers it counts dense but the deployed model factorizes are listed in the
  report's ``info["counted_dense"]``, and the row shows both counts (``rankbench.bench.running.run``).
- ``include``: projected in training and factorized at export wherever that lowers MACs
  (a layer whose factorized form would cost more stays dense).
- ``exclude``: neither projected nor factorized.

``period_basis``: ``global`` (default) projects when the global step is a multiple of
``period``; ``epoch`` counts the step within the epoch (``batch_idx % period == 0``, as the
official training loop does, so every epoch starts with a projection).

Ablations: ``project=False`` is "Nu without TRP" (only the nuclear-norm term; the weight is not
projected, so the sub-gradient is the full ``U V^T`` of ``||W||_*``, as the official nuclear
regularization script computes it); ``nuclear=0`` is "TRP without Nu".
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from rankbench.bench.checks import is_int, is_number
from rankbench.methods import lowrank
from rankbench.methods.api.base import Context, Method, MethodReport, check_param
from rankbench.methods.api.registry import register

TRP_SCHEMES = ("channel", "spatial", "decoupling", "linear")   # linear: every nn.Linear (a ViT's)
STRIDE2 = ("official", "include", "exclude")
PERIOD_BASES = ("global", "epoch")


@register("trp")
class TRP(Method):
    """Trained Rank Pruning: low-rank projection during training (+ nuclear norm), decomposed at export."""

    # svd-<driver>: torch's CUDA SVD drivers (lowrank.check_solver)
    choices = {"scheme": TRP_SCHEMES, "stride2": STRIDE2, "period_basis": PERIOD_BASES,
               "solver": lowrank.SOLVERS + tuple(f"svd-{d}" for d in lowrank.CUDA_SVD_DRIVERS)}

    def __init__(self, scheme: str = "channel", period: int = 1, energy: float = 0.9, nuclear: float = 0.0,
                 project: bool = True, export: str = "value:0.05", layers: str = "official",
                 stride2: str = "official", period_basis: str = "global", solver: str = "auto") -> None:
        check_param("scheme", scheme, scheme in TRP_SCHEMES, ", ".join(TRP_SCHEMES))
        check_param("period", period, is_int(period) and period >= 1,
                    "an int >= 1")
        check_param("energy", energy, is_number(energy) and 0 < energy <= 1, "a number in (0, 1]")
        check_param("nuclear", nuclear, is_number(nuclear) and nuclear >= 0,
                    "a number >= 0 (0 = off; 3e-4 in the paper)")
        check_param("project", project, isinstance(project, bool), "true or false")
        lowrank.parse_rule(export, "export")
        check_param("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        check_param("stride2", stride2, stride2 in STRIDE2,
                    "official (trained; dense at export except network decoupling), include, exclude")
        check_param("period_basis", period_basis, period_basis in PERIOD_BASES,
                    "global (step % period), epoch (step within the epoch % period, the official loop)")
        lowrank.check_solver(solver)
        self.scheme, self.period, self.energy, self.nuclear = scheme, period, float(energy), float(nuclear)
        self.project, self.export, self.layers, self.stride2 = project, export, layers, stride2
        self.period_basis, self.solver = period_basis, solver
        # stride-2 layers: trained unless excluded; exported per the rule above
        self._train_stride2 = stride2 != "exclude"
        self._export_stride2 = stride2 == "include" or (stride2 == "official" and scheme == "decoupling")
        # official: the official model exactly, every chosen layer factorized whatever it costs;
        # a speedup: export (not in the official code) plans on layers costing at most dense
        self._keep_dense_if_larger = stride2 != "official" or lowrank.parse_rule(export, "export").is_global
        self._steps_per_epoch = 0       # from the context at attach; 0: period_basis epoch acts as global
        self.names: list[str] = []
        self._subgrads: Optional[list[Tensor]] = None
        self._subgrad_step = -1
        self._reports: list[lowrank.LayerReport] = []
        self._counted_dense: list[str] = []
        self._warm = lowrank.WarmStart()   # solver "warm": the previous step's factors

    def choose_layers(self, model: nn.Module) -> list[tuple[str, Optional[str]]]:
        """The layers the deployed model factorizes (None) or why each stays dense."""
        return lowrank.layer_choice(model, self.scheme, self.layers, self._export_stride2)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.names = [n for n, r in lowrank.layer_choice(model, self.scheme, self.layers, self._train_stride2)
                      if r is None]
        self._steps_per_epoch = int(ctx.steps_per_epoch) if ctx is not None else 0
        # an unreachable speedup export would only fail after training: fail now
        lowrank.check_reachable(model, self.scheme, self.export, self.example_input(model), self.layers,
                                self._export_stride2, field="export")

    def _active(self, step: int) -> bool:
        if self.period_basis == "epoch" and self._steps_per_epoch > 0:
            step %= self._steps_per_epoch       # the official loop's batch_idx
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

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """The mean rank the energy rule keeps over the chosen layers (and as a fraction of their
        full rank), and each layer's as ``rank/<layer>`` (the mean over its matrices where the
        scheme has several, e.g. decoupling's one per filter), on the weights as they stand at
        the end of the epoch."""
        if not self.names:
            return {}
        rule = lowrank.Rule("energy", self.energy)
        kept, frac, per_layer = [], [], {}
        with torch.no_grad():
            for n in self.names:
                m = lowrank.to_matrix(model.get_submodule(n).weight.detach().float(), self.scheme)
                s = torch.linalg.svdvals(m.reshape(-1, m.shape[-2], m.shape[-1]))
                ranks = [lowrank.rank_from_rule(row, rule) for row in s]
                kept += ranks
                frac += [r / max(1, row.numel()) for r, row in zip(ranks, s)]
                per_layer[f"rank/{n}"] = sum(ranks) / len(ranks)
        return {"mean_kept_rank": sum(kept) / len(kept), "mean_kept_rank_fraction": sum(frac) / len(frac),
                **per_layer}

    def compress(self, model: nn.Module) -> nn.Module:
        small, self._reports = lowrank.decompose_model(
            model, self.scheme, self.export, self.layers, example_input=self.example_input(model),
            include_stride2=self._export_stride2, keep_dense_if_larger=self._keep_dense_if_larger)
        # the official MAC formula (show_low_rank in cifar-TRP.py) counts every stride-2 conv as
        # dense: under stride2 official, name those the deployed model factorizes all the same
        strided = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)}
        self._counted_dense = [r["name"] for r in self._reports if self.stride2 == "official"
                               and r["name"] in strided and r["skipped"] is None and r["rank"] is not None]
        return small

    def report(self) -> MethodReport:
        info: dict[str, Any] = {}
        if self._counted_dense:
            # rankbench.bench.running.run: the row's claimed_conv_macs counts these at their dense MACs
            info["counted_dense"] = list(self._counted_dense)
        if self._warm.warm + self._warm.cold:  # how often the warm start held, in shape-group projections
            info["warm_start"] = {"warm": self._warm.warm, "cold": self._warm.cold}
        return MethodReport(layers=list(self._reports), scheme=self.scheme, rule=self.export, info=info)

    def state_dict(self) -> dict[str, Any]:
        """The warm solver's factors and counts, so a resumed run starts warm where it stopped."""
        return {"warm": self._warm.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "warm" in state:
            self._warm.load_state_dict(state["warm"])
