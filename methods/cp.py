"""``cp``: CP decomposition of the trained baseline's convs into four convs, then fine-tuning.

Lebedev, Ganin, Rakhuba, Oseledets and Lempitsky, "Speeding-up convolutional neural networks
using fine-tuned CP-decomposition", ICLR 2015. A conv kernel ``K`` (T x S x kh x kw) is
approximated by ``R`` rank-one terms, ``K[t, s, i, j] ~ sum_r A[t, r] B[s, r] C[i, r] D[j, r]``,
and deployed as

    1x1 conv S -> R (B^T)  ->  depthwise kh x 1 conv (C; the layer's vertical stride, padding and
    dilation)  ->  depthwise 1 x kw conv (D; the horizontal ones)  ->  1x1 conv R -> T (A, plus the bias)

MACs per image: ``H W S R + H' W R kh + H' W' R kw + H' W' R T`` (H W the layer's input,
H' W' its output; the vertical conv leaves the width at W). Fine-tuning the whole network
afterwards is part of the method (``finetune_epochs``, default 2).

The decomposition is tensorly's ``parafac`` (CP-ALS), numpy backend in float64 (see
``rankbench.methods.lowrank.tensordec``). CP-ALS can be unstable (diverging, mutually cancelling components;
slow swamps), so: SVD initialisation with a fixed seed (``random_state=0``; an SVD start is
deterministic, and the seed fixes the columns it fills when R exceeds a mode's size); factors
normalised at every iteration (``normalize_factors``), the scale kept in the weights and spread
evenly over the four factors at the end (each factor times ``lambda^(1/4)``) so no conv carries
an exploding scale into fine-tuning; at most ``iters`` iterations, stopping when the relative
reconstruction error changes by less than :data:`TOL`. If the result has a NaN/inf or fits
worse than the zero tensor (relative error >= 1), ALS is rerun once from a seeded random
start; if that fails too the layer is an error naming it. Each layer report carries
``rel_error`` (``|K - K_hat|_F / |K|_F``) and ``init`` (the start that was kept), so a poor fit
shows in the result row. CP has no exact full rank: ``rank`` is R, ``full_rank`` the ratio
reference ``max(S, T)``.

Ranks (``rule``): ``rank:R`` (every chosen layer; R may exceed S or T), ``ratio:Q``
(``R = ceil(Q max(S, T))`` per layer), ``speedup:S`` (one ratio for every chosen layer, found by
bisection, then single layers raised a step so the whole model's MACs come to ``dense / S``).
A layer whose factorized MACs would not be lower than its dense MACs stays dense.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rankbench.methods import lowrank
from rankbench.methods.lowrank import tensordec
from rankbench.bench.checks import bad, check, is_int
from rankbench.methods.api.base import Context, Method, MethodReport
from rankbench.methods.api.registry import register
from rankbench.methods.lowrank.tensordec import Ranks

RULE_KINDS: tuple[str, ...] = ("rank", "ratio", "speedup")
ACCEPTED_RULES = '"rank:R" (int R>=1), "ratio:Q" (0<Q<=1, R = ceil(Q*max(S,T))), "speedup:S" (S>1)'
TOL = 1e-7           # ALS stops when the relative reconstruction error changes by less than this
SEED = 0             # tensorly's random_state: the SVD start's filler columns and the random restart


class CPConv(nn.Sequential):
    """A conv replaced by its CP factors: ``[0]`` 1x1 S->R, ``[1]`` depthwise kh x 1,
    ``[2]`` depthwise 1 x kw, ``[3]`` 1x1 R->T with the bias; fvcore sees four ordinary convs."""

    def __init__(self, first: nn.Conv2d, vertical: nn.Conv2d, horizontal: nn.Conv2d, last: nn.Conv2d) -> None:
        super().__init__(first, vertical, horizontal, last)
        self.rank = first.out_channels

    def extra_repr(self) -> str:
        return f"cp rank={self.rank}"


def _axis(value: Any, axis: int, other: int) -> tuple[int, int]:
    """The (H, W) pair of a conv setting that keeps ``axis`` and puts ``other`` on the other one."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    return (pair[0], other) if axis == 0 else (other, pair[1])


def build(conv: nn.Conv2d, ranks: Ranks) -> CPConv:
    """The CP structure of ``conv`` at rank ``(R,)``, weights not set. Stride, padding and
    dilation are split per axis between the two depthwise convs ('same' padding, allowed only at
    stride 1, acts per axis and carries over to both)."""
    (r,) = ranks
    t, s, kh, kw = conv.weight.shape
    kw_ = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    pad = lowrank.numeric_padding(conv)

    def axis_pad(axis: int) -> Any:
        return pad if isinstance(pad, str) else _axis(pad, axis, 0)

    first = nn.Conv2d(s, r, 1, bias=False, **kw_)
    vertical = nn.Conv2d(r, r, (kh, 1), stride=_axis(conv.stride, 0, 1), padding=axis_pad(0),
                         dilation=_axis(conv.dilation, 0, 1), groups=r, padding_mode=conv.padding_mode,
                         bias=False, **kw_)
    horizontal = nn.Conv2d(r, r, (1, kw), stride=_axis(conv.stride, 1, 1), padding=axis_pad(1),
                           dilation=_axis(conv.dilation, 1, 1), groups=r, padding_mode=conv.padding_mode,
                           bias=False, **kw_)
    last = nn.Conv2d(r, t, 1, bias=conv.bias is not None, **kw_)
    out = CPConv(first, vertical, horizontal, last)
    out.train(conv.training)
    return out


def _rel_error(kernel: np.ndarray, weights: np.ndarray, factors: Sequence[np.ndarray]) -> float:
    a, b, c, d = factors
    approx = np.einsum("r,tr,sr,ir,jr->tsij", weights, a, b, c, d, optimize=True)
    return float(np.linalg.norm(kernel - approx) / max(np.linalg.norm(kernel), np.finfo(np.float64).tiny))


def decompose(kernel: np.ndarray, rank: int, iters: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Balanced CP factors ``[A (T,R), B (S,R), C (kh,R), D (kw,R)]`` of a float64 kernel, and the
    facts of the fit (``rel_error``, ``init``): see the module docstring for the safeguards."""
    from tensorly.decomposition import parafac

    for init in ("svd", "random"):
        with tensordec.tensorly_numpy(), np.errstate(all="ignore"):
            cp = parafac(kernel, rank, n_iter_max=iters, init=init, tol=TOL, normalize_factors=True,
                         random_state=SEED)
        weights, factors = np.asarray(cp.weights), [np.asarray(f) for f in cp.factors]
        if all(np.isfinite(f).all() for f in factors) and np.isfinite(weights).all():
            err = _rel_error(kernel, weights, factors)
            if err < 1.0:
                scale = np.abs(weights) ** 0.25
                sign = np.where(weights < 0, -1.0, 1.0)
                balanced = [factors[0] * (scale * sign)] + [f * scale for f in factors[1:]]
                return balanced, {"rel_error": err, "init": init}
    raise RuntimeError(f"CP-ALS at rank {rank} failed from an SVD and a random start "
                       f"(non-finite factors or relative error >= 1)")


def make_fill(iters: int) -> Callable[[nn.Conv2d, Ranks], tuple[CPConv, dict[str, Any]]]:
    """The ``fill`` of :class:`tensordec.Decomposition` for CP-ALS with at most ``iters`` iterations."""

    def fill(conv: nn.Conv2d, ranks: Ranks) -> tuple[CPConv, dict[str, Any]]:
        try:
            (a, b, c, d), facts = decompose(tensordec.kernel64(conv), ranks[0], iters)
        except RuntimeError as e:
            raise RuntimeError(f"layer {tuple(conv.weight.shape)}: {e}") from None
        out = build(conv, ranks)
        as_w = {"device": conv.weight.device, "dtype": conv.weight.dtype}

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(**as_w)

        with torch.no_grad():
            out[0].weight.copy_(t(b.T)[:, :, None, None])       # (R, S, 1, 1)
            out[1].weight.copy_(t(c.T)[:, None, :, None])       # (R, 1, kh, 1)
            out[2].weight.copy_(t(d.T)[:, None, None, :])       # (R, 1, 1, kw)
            out[3].weight.copy_(t(a)[:, :, None, None])         # (T, R, 1, 1)
            if conv.bias is not None:
                out[3].bias.copy_(conv.bias.detach())
        return out, facts

    return fill


def macs(conv: nn.Conv2d, ranks: Ranks, in_hw: Sequence[int], out_hw: Sequence[int]) -> int:
    """Per-image MACs of :func:`build` ``(conv, ranks)``: ``H W S R + H' W R kh + H' W' R kw + H' W' R T``."""
    (r,) = ranks
    t, s, kh, kw = conv.weight.shape
    (hi, wi), (ho, wo) = in_hw, out_hw
    return r * (hi * wi * s + ho * wi * kh + ho * wo * (kw + t))


def full(conv: nn.Conv2d) -> Ranks:
    """The ratio reference ``max(S, T)`` (CP rank has no closed form)."""
    t, s = conv.weight.shape[:2]
    return (max(s, t),)


def decomposition(iters: int = 300) -> tensordec.Decomposition:
    """CP as :class:`tensordec.Decomposition` (``iters``: the ALS iteration cap)."""
    return tensordec.Decomposition(scheme="cp", reason=lambda conv: None, full=full, macs=macs, build=build,
                                   fill=make_fill(iters))


def check_rule(rule: Any, field: str = "rule") -> lowrank.Rule:
    """``rank:R``, ``ratio:Q`` or ``speedup:S``, else the one-line error."""
    try:
        parsed = lowrank.parse_rule(rule, field)
    except ValueError:
        parsed = None
    if parsed is None or parsed.kind not in RULE_KINDS:
        raise bad(field, rule, ACCEPTED_RULES)
    return parsed


def plan_ranks(plan: tensordec.LayerPlan, rule: lowrank.Rule) -> list[Ranks]:
    """``(R,)`` for every chosen layer of ``plan`` under ``rule``."""
    refs = [plan.dec.full(plan.modules[plan.reports[i]["name"]])[0] for i in plan.chosen]
    if rule.kind == "rank":
        return [(int(rule.value),)] * len(refs)
    if rule.kind == "ratio":
        return [(tensordec.ratio_rank(rule.value, ref),) for ref in refs]
    # the ratio at which every layer has reached its dense cost bounds the search
    per_rank = [plan.fmacs(i, (1,)) for i in plan.chosen]
    top = max([plan.reports[i]["dense_macs"] / (c * ref) for i, c, ref in zip(plan.chosen, per_rank, refs)],
              default=1.0) + 1.0
    return tensordec.fit_speedup(plan, rule.value, lambda q: [(tensordec.ratio_rank(q, ref),) for ref in refs], top)


@register("cp")
class CP(Method):
    """CP decomposition (Lebedev et al., ICLR 2015) of the trained baseline into four convs, then fine-tuning."""

    exact_full_rank = False   # no R reproduces every kernel (rankbench.methods.api.conformance skips that check)
    starts_from_baseline = True

    def __init__(self, rule: str = "ratio:0.5", finetune_epochs: int = 2, iters: int = 300,
                 layers: str = "official", include_stride2: bool = True) -> None:
        check_rule(rule)
        check("finetune_epochs", finetune_epochs, is_int(finetune_epochs) and finetune_epochs >= 0, "an int >= 0")
        check("iters", iters, is_int(iters) and iters >= 1, "an int >= 1 (CP-ALS iterations at most)")
        check("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        check("include_stride2", include_stride2, isinstance(include_stride2, bool), "true or false")
        self.rule, self.finetune_epochs, self.iters = rule, finetune_epochs, iters
        self.layers, self.include_stride2 = layers, include_stride2
        self._reports: list[dict[str, Any]] = []

    def _plan(self, model: nn.Module) -> tensordec.LayerPlan:
        return tensordec.plan_layers(model, decomposition(self.iters), self.layers, self.include_stride2,
                                     self.example_input(model))

    def choose_layers(self, model: nn.Module) -> list[tuple[str, Any]]:
        """The convs compress() decomposes (None) or why each stays dense."""
        return tensordec.choose_layers(model, decomposition(self.iters), self.layers, self.include_stride2)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.check_reachable(model, self.example_input(model))   # out of reach: fail before training

    def check_reachable(self, model: nn.Module, example_input: torch.Tensor) -> None:
        """Fail (one line naming ``rule``) when a ``speedup:S`` rule is out of reach even at rank 1
        on every chosen layer. ``rankbench.bench.preflight.model`` calls it on the untrained
        network when the spec is read; :meth:`attach` calls it again before training."""
        rule = check_rule(self.rule)
        if rule.is_global:
            plan = tensordec.plan_layers(model, decomposition(self.iters), self.layers, self.include_stride2,
                                         example_input)
            tensordec.check_speedup(plan, rule.value, [(1,)] * len(plan.chosen))

    def compress(self, model: nn.Module) -> nn.Module:
        plan = self._plan(model)
        small = tensordec.decompose_planned(model, plan, plan_ranks(plan, check_rule(self.rule)))
        self._reports = plan.reports
        return small

    def rebuild(self, model: nn.Module, layers: Sequence[dict[str, Any]]) -> nn.Module:
        """The structure :meth:`compress` produced, from its report's layers, weights unset:
        a saved state dict of the compressed model loads into it."""
        return tensordec.rebuild(model, layers, [decomposition(self.iters)])

    def report(self) -> MethodReport:
        return MethodReport(layers=list(self._reports), scheme="cp", rule=self.rule)
