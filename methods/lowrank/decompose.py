"""Whole-model decomposition: factorize a model's chosen layers at a rank rule, plan a MAC
speed-up, and check before training that a ``speedup:`` target is reachable.

:func:`decompose_model` returns the factorized copy and one :class:`LayerReport` per Conv2d/Linear
(skipped layers with their reason); :func:`build_factorized` rebuilds that structure from the
reports, e.g. to load a saved state dict.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, TypedDict, Union

import torch
from torch import Tensor, nn

from rankbench.bench.checks import bad, missing

from rankbench.methods.lowrank.factorized import factorize
from rankbench.methods.lowrank.layers import layer_choice, set_module
from rankbench.methods.lowrank.macs import Probe, dense_macs, factorized_macs, probe_layers
from rankbench.methods.lowrank.rules import Rule, parse_rule, rank_mask
from rankbench.methods.lowrank.schemes import check_scheme, check_tiles, full_rank, layer_tiles, svd_threads, to_matrix


class LayerReport(TypedDict):
    """One Conv2d/Linear of a decomposed model. ``rank``/``macs`` are per layer (``macs`` equals
    ``dense_macs`` when skipped); ``full_rank`` and ``rank`` are per tile when ``tiles`` > 1, and
    one per mode (a list) for decompositions with several ranks (Tucker-2: output, input)."""

    name: str
    shape: list[int]
    scheme: str
    rank: Optional[Union[int, list[int]]]
    full_rank: Optional[Union[int, list[int]]]
    dense_macs: Optional[int]
    macs: Optional[int]
    skipped: Optional[str]       # None, or why the layer stayed dense
    tiles: int



def _layer_spectrum(module: nn.Module, scheme: str, tiles: int = 1) -> Tensor:
    """Singular values, float64 on CPU (decomposition is a one-off; precision beats speed).
    Decoupling and tiles give a batch ``(filters or tiles, k)``."""
    m = to_matrix(module.weight.detach().to("cpu", torch.float64), scheme, tiles)
    with svd_threads(m):
        return torch.linalg.svdvals(m)


def _rank_for(spectrum: Tensor, rule: Rule) -> int:
    # per filter (decoupling) or per tile: the layer's one rank is the largest any of them needs
    return int(rank_mask(spectrum, rule).sum(-1).max())


@dataclass
class _Plan:
    """Which layers a decomposition touches and what each costs, before any SVD."""

    reports: list[LayerReport]
    chosen: list[int]                 # indices into reports
    modules: dict[str, nn.Module]
    probes: dict[str, Probe]
    other_macs: int
    scheme: str

    def fmacs(self, i: int, rank: int) -> int:
        rep = self.reports[i]
        p = self.probes[rep["name"]]
        return factorized_macs(self.modules[rep["name"]], self.scheme, rank, p.out_hw, p.in_hw, p.out_rows,
                               rep["tiles"]) * p.calls

    @property
    def dense_total(self) -> int:
        return self.other_macs + sum(r["dense_macs"] or 0 for r in self.reports)


def _plan(model: nn.Module, scheme: str, layers: Union[None, str, Sequence[str]], example_input: Optional[Tensor],
          include_stride2: bool, tiles: int) -> _Plan:
    check_scheme(scheme)
    check_tiles(scheme, tiles)
    probes, other = probe_layers(model, example_input) if example_input is not None else ({}, 0)
    reasons = layer_choice(model, scheme, "official" if layers is None else layers, include_stride2)
    reports: list[LayerReport] = []
    chosen: list[int] = []
    modules: dict[str, nn.Module] = {}
    for name, reason in reasons:
        mod = model.get_submodule(name)
        modules[name] = mod
        p = probes.get(name)
        if example_input is not None and p is None and reason is None:
            reason = "not reached by the forward pass"
        t = layer_tiles(mod, scheme, tiles) if reason is None else 1
        d = dense_macs(mod, p.out_hw, p.out_rows) * p.calls if p else None
        reports.append({"name": name, "shape": list(mod.weight.shape), "scheme": scheme, "rank": None,
                        "full_rank": None if reason else full_rank(mod, scheme, t),
                        "dense_macs": d, "macs": d, "skipped": reason, "tiles": t})
        if reason is None:
            chosen.append(len(reports) - 1)
    return _Plan(reports, chosen, modules, probes, other, scheme)


def decompose_model(model: nn.Module, scheme: str, rule: Union[str, Rule],
                    layers: Union[None, str, Sequence[str]] = None, example_input: Optional[Tensor] = None,
                    keep_dense_if_larger: bool = True, include_stride2: bool = True, tiles: int = 1,
                    spectra: Optional[Mapping[str, Tensor]] = None, allocation: str = "threshold",
                    ) -> tuple[nn.Module, list[LayerReport]]:
    """Factorize ``model``'s layers (a deep copy; ``model`` is untouched) under ``scheme``/``rule``.

    ``layers``: ``"official"`` (default; the official TRP choice for conv schemes, every
    ``nn.Linear`` for ``linear``), ``"all"``, or a list of names (see :func:`layer_choice`).
    ``example_input`` (a batch) is needed for MAC counts and for the ``speedup`` rule. A layer
    whose factorized MACs would not be lower than its dense MACs stays dense
    (``keep_dense_if_larger``), with the reason in its report. ``tiles`` (channel scheme):
    factorize each input-channel tile separately (see :func:`factorize`). ``spectra`` (layer name
    -> a descending 1-D spectrum, at most the layer's full rank long): what the rule reads for
    that layer instead of its weight's singular values, e.g. the square roots of the eigenvalues
    of a data-driven method's response covariance (the factors are still the weight's SVD; such
    a method refits them). ``allocation`` (a ``speedup:S`` rule): ``threshold`` (one energy
    threshold for every layer, :func:`_ranks_for_speedup`) or ``product`` (the ranks that keep
    the largest product over layers of the kept energy within the MAC budget, Zhang et al.'s
    criterion: :func:`_ranks_for_product`; one spectrum per layer).

    Returns the factorized model and one :class:`LayerReport` per Conv2d/Linear in the model
    (skipped ones carry the reason). :func:`build_factorized` rebuilds the same structure from the
    reports, e.g. to load a saved state dict."""
    rule = parse_rule(rule)
    if rule.is_global and example_input is None:
        raise missing("example_input", f"an example batch: rule {rule} counts MACs on it")
    out = copy.deepcopy(model)
    plan = _plan(out, scheme, layers, example_input, include_stride2, tiles)
    reports = plan.reports
    given = spectra or {}
    spectra_ = [given[reports[i]["name"]].to("cpu", torch.float64) if reports[i]["name"] in given
                else _layer_spectrum(plan.modules[reports[i]["name"]], scheme, reports[i]["tiles"]) for i in plan.chosen]
    if allocation not in ALLOCATIONS:
        raise bad("allocation", allocation, ", ".join(ALLOCATIONS))
    if rule.is_global and allocation == "product":
        if any(spec.dim() != 1 for spec in spectra_):
            raise bad("allocation", allocation, "threshold", "per filter or per tile spectra have no one energy")
        ranks = _ranks_for_product(plan, spectra_, rule.value)
    elif rule.is_global:
        ranks = _ranks_for_speedup(plan, spectra_, rule.value)
    else:
        ranks = [_rank_for(spec, rule) for spec in spectra_]

    for i, r in zip(plan.chosen, ranks):
        rep = reports[i]
        if example_input is not None:
            f = plan.fmacs(i, r)
            if keep_dense_if_larger and f >= rep["dense_macs"]:
                rep["skipped"] = f"rank {r} of {rep['full_rank']}: factorized MACs {f} >= dense {rep['dense_macs']}"
                continue
            rep["macs"] = f
        rep["rank"] = r
        set_module(out, rep["name"], factorize(plan.modules[rep["name"]], scheme, r, rep["tiles"]))
    return out, reports


def max_speedup(model: nn.Module, scheme: str, example_input: Tensor, layers: Union[None, str, Sequence[str]] = None,
                include_stride2: bool = True, tiles: int = 1) -> float:
    """The largest MAC speed-up ``decompose_model`` can reach (rank 1 in every chosen layer);
    depends only on the architecture, so a ``speedup:`` rule can be checked before training."""
    plan = _plan(model, scheme, layers, example_input, include_stride2, tiles)
    least = plan.dense_total - sum(plan.reports[i]["dense_macs"] - min(plan.fmacs(i, 1), plan.reports[i]["dense_macs"])
                                   for i in plan.chosen)
    return plan.dense_total / least


def check_reachable(model: nn.Module, scheme: str, rule: Union[str, Rule], example_input: Tensor,
                    layers: Union[None, str, Sequence[str]] = None, include_stride2: bool = True, tiles: int = 1,
                    field: str = "rule") -> None:
    """For a ``speedup:S`` rule, fail now (before training) if ``S`` is out of reach."""
    rule = parse_rule(rule, field)
    if rule.is_global:
        best = max_speedup(model, scheme, example_input, layers, include_stride2, tiles)
        if rule.value > best:
            raise bad(field, str(rule), f"speedup up to {best:.3f} (rank 1 everywhere)",
                      f"not reachable with scheme {scheme!r} on these layers")


ALLOCATIONS: tuple[str, ...] = ("threshold", "product")


def _costs(plan: _Plan, spectra: list[Tensor], speedup: float) -> tuple[float, int, list[list[int]]]:
    """``(target, fixed, tables)`` for a ``speedup:S`` plan: the model's MAC budget, the MACs no
    rank changes (layers left dense, other ops), and per chosen layer its MACs at ranks 1..k,
    capped at dense (such a layer would stay dense). Fails in one line if rank 1 everywhere
    does not fit."""
    reports = plan.reports
    target = plan.dense_total / speedup
    fixed = plan.other_macs + sum(r["dense_macs"] or 0 for r in reports if r["skipped"] is not None)
    tables = [[min(plan.fmacs(i, r), reports[i]["dense_macs"]) for r in range(1, spec.shape[-1] + 1)]
              for i, spec in zip(plan.chosen, spectra)]
    least = fixed + sum(t[0] for t in tables)
    if least > target:
        raise bad("rule", f"speedup:{speedup}", f"speedup up to {plan.dense_total / least:.3f} (rank 1 everywhere)",
                  "not reachable with these layers")
    return target, fixed, tables


def _ranks_for_speedup(plan: _Plan, spectra: list[Tensor], speedup: float) -> list[int]:
    """One global energy threshold ``e`` for all chosen layers, found by bisection, so that the
    model's MACs (every conv/linear, dense or not, plus other matmul-type ops) come as close
    as the rank steps allow to ``dense_total / speedup``. Energy is scale-free, so one threshold is
    comparable across layers; MACs are monotone in ``e``, so bisection converges."""
    target, fixed, tables = _costs(plan, spectra, speedup)

    def ranks_at(e: float) -> list[int]:
        return [_rank_for(spec, Rule("energy", e)) if e > 0 else 1 for spec in spectra]

    def total(rs: list[int]) -> int:
        return fixed + sum(t[r - 1] for t, r in zip(tables, rs))

    lo, hi = 0.0, 1.0
    for _ in range(60):  # 2^-60: far below the gap between two distinct cumulative energies
        mid = (lo + hi) / 2
        if total(ranks_at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    r_lo, r_hi = ranks_at(lo), ranks_at(hi)
    return r_lo if abs(total(r_lo) - target) <= abs(total(r_hi) - target) else r_hi


def _ranks_for_product(plan: _Plan, spectra: list[Tensor], speedup: float) -> list[int]:
    """Ranks that keep the largest product over layers of the kept energy
    ``E_l(r) = sum_{a <= r} s_a^2`` within the MAC budget (Zhang et al., TPAMI 2016): from rank 1
    everywhere, each step raises the layer whose next rank adds the most ``log E`` per MAC it
    costs, while the model still fits (``log E_l`` is concave in the rank and each layer's MACs
    grow by the same amount per rank, so this marginal analysis is the optimum up to one rank
    step; a rank past the point where the factorized layer costs its dense MACs is free, and
    taken). Then one more step if it lands closer to ``dense_total / speedup``, as the
    threshold allocation does."""
    target, fixed, tables = _costs(plan, spectra, speedup)
    log_e = [[math.log(v) if v > 0 else -math.inf for v in torch.cumsum(spec.double() ** 2, 0).tolist()]
             for spec in spectra]
    ranks = [1] * len(tables)
    total = fixed + sum(t[0] for t in tables)

    def best_step(room: float) -> Optional[tuple[int, int]]:
        """(layer, cost) of the step with the most log-energy gained per MAC among those costing
        at most ``room``; None when none fits."""
        best: Optional[tuple[float, int, int]] = None
        for layer, (t, r) in enumerate(zip(tables, ranks)):
            if r >= len(t) or (cost := t[r] - t[r - 1]) > room:
                continue
            gained = log_e[layer][r] - log_e[layer][r - 1]
            gain = math.inf if cost <= 0 else (0.0 if math.isnan(gained) else gained) / cost
            if best is None or gain > best[0]:
                best = (gain, layer, cost)
        return None if best is None else (best[1], best[2])

    while (step := best_step(target - total)) is not None:
        layer, cost = step
        ranks[layer] += 1
        total += cost
    over = best_step(math.inf)
    if over is not None and abs(total + over[1] - target) < abs(total - target):
        ranks[over[0]] += 1
    return ranks


def build_factorized(model: nn.Module, reports: Sequence[LayerReport]) -> nn.Module:
    """A deep copy of ``model`` with every non-skipped reported layer factorized at its reported
    rank (and tiles): the structure :func:`decompose_model` produced, so its saved state dict loads."""
    out = copy.deepcopy(model)
    for rep in reports:
        if rep.get("skipped") is None and rep.get("rank") is not None:
            mod = out.get_submodule(rep["name"])
            set_module(out, rep["name"], factorize(mod, rep["scheme"], int(rep["rank"]), int(rep.get("tiles", 1))))
    return out
