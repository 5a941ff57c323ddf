"""What the tensor-decomposition methods (``tucker2``, ``cp``) share: which convs they take and
what each costs, the whole-model MAC fit of a ``speedup:S`` rule, the rebuild of a decomposed
model from its report, and the tensorly call context.

A method supplies a :class:`Decomposition`: how many ranks a layer has, the MACs of the
factorized layer at given ranks (the formula the tests hold to fvcore's count), how to build
the factorized structure and how to fill it from the kernel. Ranks are a tuple per layer
(``(R_out, R_in)`` for Tucker-2, ``(R,)`` for CP); a layer report stores them as ``rank``
(a list for Tucker-2, an int for CP).

tensorly runs on its numpy backend, in float64, on CPU, with BLAS limited to one thread
(:func:`tensorly_numpy`): decomposing a layer is a one-off on a small tensor, where precision
matters more than speed; the numpy backend leaves torch's autograd and devices out of it and
is selected per call, so a process that set tensorly's global backend to another one is not
disturbed; and layer-sized products gain nothing from threads, while with busy cores a
multi-threaded BLAS was measured several times slower than one thread.

Public API: :class:`Decomposition`, :class:`LayerPlan`, :func:`plan_layers`, :func:`check_speedup`, :func:`fit_speedup`,
:func:`decompose_planned`, :func:`rebuild`, :func:`tensorly_numpy`,
:func:`kernel64`, :func:`ratio_rank`.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from rankbench.bench.checks import bad
from rankbench.methods import lowrank

Ranks = tuple[int, ...]


@contextlib.contextmanager
def tensorly_numpy() -> Iterator[None]:
    """tensorly's numpy backend, BLAS on one thread, tensorly's notices about SVD sizes off
    (an SVD initialisation asked for more vectors than a mode has fills the rest, seeded)."""
    import tensorly as tl
    from threadpoolctl import threadpool_limits

    with tl.backend_context("numpy"), threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*", category=UserWarning)
        yield


def kernel64(conv: nn.Conv2d) -> np.ndarray:
    """The conv's kernel ``(T, S, kh, kw)`` as a float64 numpy array."""
    return conv.weight.detach().to("cpu", torch.float64).numpy()


@dataclass(frozen=True)
class Decomposition:
    """One tensor decomposition of a conv, as the shared planning code needs it.

    ``scheme``: the name layer reports carry (``"tucker2"``, ``"cp"``).
    ``reason(conv)``: None if the conv can be decomposed, else why it stays dense.
    ``full(conv)``: the largest useful ranks (the rank steps a ``speedup`` search may take).
    ``macs(conv, ranks, in_hw, out_hw)``: per-image MACs of the factorized layer.
    ``build(conv, ranks)``: the factorized structure, weights unset (for :func:`rebuild`).
    ``fill(conv, ranks)``: the factorized layer with weights from the decomposition, and facts
    for its report (e.g. the kernel's relative reconstruction error)."""

    scheme: str
    reason: Callable[[nn.Conv2d], Optional[str]]
    full: Callable[[nn.Conv2d], Ranks]
    macs: Callable[[nn.Conv2d, Ranks, Sequence[int], Sequence[int]], int]
    build: Callable[[nn.Conv2d, Ranks], nn.Module]
    fill: Callable[[nn.Conv2d, Ranks], tuple[nn.Module, dict[str, Any]]]


@dataclass
class LayerPlan:
    """Every Conv2d/Linear of a model with its report, the chosen ones, and what each costs."""

    dec: Decomposition
    reports: list[dict[str, Any]]
    chosen: list[int]                          # indices into reports
    modules: dict[str, nn.Module]
    probes: dict[str, Any] = field(default_factory=dict)
    other_macs: int = 0

    def fmacs(self, i: int, ranks: Ranks) -> int:
        """MACs of chosen layer ``i`` (an index into reports) factorized at ``ranks``."""
        rep = self.reports[i]
        p = self.probes[rep["name"]]
        return self.dec.macs(self.modules[rep["name"]], ranks, p.in_hw, p.out_hw) * p.calls

    def capped(self, i: int, ranks: Ranks) -> int:
        """The same, capped at the dense cost: a layer that would cost more stays dense."""
        return min(self.fmacs(i, ranks), self.reports[i]["dense_macs"])

    @property
    def dense_total(self) -> int:
        return self.other_macs + sum(r["dense_macs"] or 0 for r in self.reports)

    @property
    def fixed_macs(self) -> int:
        """MACs of everything no decomposition touches (other ops and the layers left dense)."""
        return self.other_macs + sum(r["dense_macs"] or 0 for r in self.reports if r["skipped"] is not None)

    def total(self, ranks: Sequence[Ranks]) -> int:
        """Whole-model MACs with the chosen layers at ``ranks`` (one tuple per chosen layer)."""
        return self.fixed_macs + sum(self.capped(i, r) for i, r in zip(self.chosen, ranks))


def choose_layers(model: nn.Module, dec: Decomposition, layers: Any,
                  include_stride2: bool) -> list[tuple[str, Optional[str]]]:
    """Every Conv2d/Linear with None (``dec`` decomposes it) or why it stays dense: a method's
    ``choose_layers`` (``model`` may be on the meta device)."""
    return [(name, reason if reason is not None else dec.reason(model.get_submodule(name)))
            for name, reason in lowrank.layer_choice(model, "channel", layers, include_stride2)]


def plan_layers(model: nn.Module, dec: Decomposition, layers: Any, include_stride2: bool,
                example_input: Tensor) -> LayerPlan:
    """Which convs ``dec`` takes (``layers``: ``"official"``, ``"all"`` or names, as
    ``lowrank.layer_choice`` reads them) and their dense cost on ``example_input``."""
    probes, other = lowrank.probe_layers(model, example_input)
    reports: list[dict[str, Any]] = []
    chosen: list[int] = []
    modules: dict[str, nn.Module] = {}
    for name, reason in choose_layers(model, dec, layers, include_stride2):
        mod = model.get_submodule(name)
        modules[name] = mod
        p = probes.get(name)
        if p is None and reason is None:
            reason = "not reached by the forward pass"
        d = lowrank.dense_macs(mod, p.out_hw, p.out_rows) * p.calls if p else None
        full = list(dec.full(mod)) if reason is None else None
        reports.append({"name": name, "shape": list(mod.weight.shape), "scheme": dec.scheme, "rank": None,
                        "full_rank": (full[0] if full and len(full) == 1 else full), "dense_macs": d, "macs": d,
                        "skipped": reason, "tiles": 1})
        if reason is None:
            chosen.append(len(reports) - 1)
    return LayerPlan(dec, reports, chosen, modules, probes, other)


def check_speedup(plan: LayerPlan, speedup: float, ones: list[Ranks], field_name: str = "rule") -> None:
    """Fail (one line, naming the reachable speed-up) if ``speedup`` is out of reach even with
    every chosen layer at ``ones`` (rank 1): checkable before any training."""
    least = plan.total(ones)
    if least > plan.dense_total / speedup:
        raise bad(field_name, f"speedup:{speedup}", f"speedup up to {plan.dense_total / least:.3f} (rank 1 everywhere)",
                  "not reachable with these layers")


def fit_speedup(plan: LayerPlan, speedup: float, ranks_at: Callable[[float], list[Ranks]], top: float,
                field_name: str = "rule") -> list[Ranks]:
    """Ranks for the chosen layers so the model's MACs come as close as rank steps allow to
    ``dense_total / speedup`` without exceeding it by more than one step.

    ``ranks_at(t)`` gives every chosen layer's ranks for one global knob ``t`` in ``[0, top]``
    (an energy threshold, a rank ratio), non-decreasing in ``t``, rank 1 at ``t = 0``. A
    bisection on ``t`` finds the last knob under the target; many layers may share a rank step
    (same-shaped layers under a ratio), so the layers that differ between that knob and the
    next are then raised one at a time while the total stays under the target, and the closer of
    the last total under and the first one over wins."""
    target = plan.dense_total / speedup
    check_speedup(plan, speedup, ranks_at(0.0), field_name)
    lo, hi = 0.0, top
    if plan.total(ranks_at(hi)) <= target:
        return ranks_at(hi)
    for _ in range(60):  # 2^-60 of the range: far below the gap between two rank steps
        mid = (lo + hi) / 2
        if plan.total(ranks_at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    cur, up = list(ranks_at(lo)), ranks_at(hi)
    for j in range(len(cur)):
        if cur[j] == up[j]:
            continue
        trial = cur[:j] + [up[j]] + cur[j + 1:]
        if plan.total(trial) <= target:
            cur = trial
        else:
            return trial if abs(plan.total(trial) - target) < abs(plan.total(cur) - target) else cur
    return cur


def decompose_planned(model: nn.Module, plan: LayerPlan, ranks: Sequence[Ranks],
                      keep_dense_if_larger: bool = True) -> nn.Module:
    """A deep copy of ``model`` (planned on ``model`` itself) with every chosen layer decomposed at
    its ranks; the plan's reports are filled in (rank, MACs, or why a layer stayed dense)."""
    out = copy.deepcopy(model)
    for i, r in zip(plan.chosen, ranks):
        rep = plan.reports[i]
        f = plan.fmacs(i, r)
        shown = list(r) if len(r) > 1 else r[0]
        if keep_dense_if_larger and f >= rep["dense_macs"]:
            rep["skipped"] = f"rank {shown}: factorized MACs {f} >= dense {rep['dense_macs']}"
            continue
        try:
            layer, facts = plan.dec.fill(plan.modules[rep["name"]], r)
        except RuntimeError as e:  # a decomposition that failed: say which layer
            raise RuntimeError(f"{plan.dec.scheme} of {rep['name']}: {e}") from None
        rep.update(rank=shown, macs=f, **facts)
        lowrank.set_module(out, rep["name"], layer)
    return out


def rebuild(model: nn.Module, layers: Sequence[dict[str, Any]], decs: Sequence[Decomposition]) -> nn.Module:
    """A deep copy of ``model`` with every decomposed layer of ``layers`` (a method's report)
    replaced by its factorized structure, so the compressed model's saved state dict loads.
    Layers of a scheme ``decs`` does not know go through ``lowrank.build_factorized``."""
    by_scheme = {d.scheme: d for d in decs}
    out = copy.deepcopy(model)
    rest = []
    for rep in layers:
        if rep.get("skipped") is not None or rep.get("rank") is None:
            continue
        dec = by_scheme.get(rep.get("scheme"))
        if dec is None:
            rest.append(rep)
            continue
        r = rep["rank"]
        ranks = tuple(int(v) for v in r) if isinstance(r, (list, tuple)) else (int(r),)
        lowrank.set_module(out, rep["name"], dec.build(out.get_submodule(rep["name"]), ranks))
    return lowrank.build_factorized(out, rest) if rest else out


def ratio_rank(q: float, size: int) -> int:
    """``ceil(q * size)``, at least 1: the rank a ratio ``q`` gives a mode of ``size``."""
    return max(1, math.ceil(q * size))
