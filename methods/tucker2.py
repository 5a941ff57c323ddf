"""``tucker2``: Tucker-2 decomposition of the trained baseline's convs, then optional fine-tuning.

Kim, Park, Yoo, Choi, Yang and Shin, "Compression of deep convolutional neural networks for fast
and low power mobile applications", ICLR 2016. A conv kernel ``K`` (T x S x kh x kw) is
approximated along its two channel modes only, ``K ~ C x_0 U_out x_1 U_in`` with ``U_out``
(T x R_out), ``U_in`` (S x R_in) and the core ``C`` (R_out x R_in x kh x kw); deployed as

    1x1 conv S -> R_in (weights U_in^T)  ->  kh x kw conv R_in -> R_out (the core; the layer's
    stride, padding, padding mode and dilation)  ->  1x1 conv R_out -> T (U_out, plus the bias)

MACs per image: ``H W S R_in + H' W' R_in R_out kh kw + H' W' R_out T`` (H W the layer's
input, H' W' its output). The decomposition is tensorly's ``partial_tucker`` (HOOI, SVD
initialisation) on modes [0, 1], numpy backend in float64 (see ``rankbench.methods.lowrank.tensordec``); at
``R_out = T``, ``R_in = S`` it is exact.

Ranks (``rule``):

- ``vbmf`` (default, as Kim et al.): analytic empirical VBMF (``rankbench.methods.lowrank.vbmf``, Nakajima et al.,
  JMLR 2013) on the mode-0 unfolding (T x S kh kw) gives R_out, on the mode-1 unfolding
  (S x T kh kw) R_in; at least 1 each. VBMF keeps only components above the noise level it
  estimates from the same matrix, so weights still close to their random initialisation (a
  briefly trained network) get ranks near 1: the rule is meant for converged networks.
- any rank rule of ``rankbench.methods.lowrank`` (``energy:E``, ``value:T``, ``ratio:Q``, ``rank:R``,
  ``entropy:TAU``) on each unfolding's singular values;
- ``speedup:S``: one global energy threshold for both modes of every chosen layer, found by
  bisection so that the whole model's MACs come to ``dense / S`` (``rankbench.methods.lowrank.tensordec.fit_speedup``).

A layer whose factorized MACs would not be lower than its dense MACs stays dense, with the
reason in its report. A layer report's ``rank`` is ``[R_out, R_in]``, ``full_rank`` the largest
ranks ``[min(T, S kh kw), min(S, T kh kw)]``, ``rel_error`` the kernel's relative
reconstruction error ``|K - K_hat|_F / |K|_F``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from rankbench.methods import lowrank
from rankbench.methods.lowrank import tensordec
from rankbench.bench.checks import bad, check, is_int
from rankbench.methods.api.base import Context, Method, MethodReport
from rankbench.methods.lowrank.vbmf import vbmf_rank
from rankbench.methods.api.registry import register
from rankbench.methods.lowrank.tensordec import Ranks

VBMF = "vbmf"
ACCEPTED_RULES = f'"{VBMF}", {lowrank.ACCEPTED_RULES}'


class Tucker2Conv(nn.Sequential):
    """A conv replaced by its Tucker-2 factors: ``[0]`` 1x1 S->R_in, ``[1]`` the core conv,
    ``[2]`` 1x1 R_out->T with the bias; fvcore sees three ordinary convs."""

    def __init__(self, first: nn.Conv2d, core: nn.Conv2d, last: nn.Conv2d) -> None:
        super().__init__(first, core, last)
        self.ranks = (core.out_channels, core.in_channels)

    def extra_repr(self) -> str:
        return f"tucker2 ranks (R_out, R_in)={self.ranks}"


def build(conv: nn.Conv2d, ranks: Ranks) -> Tucker2Conv:
    """The Tucker-2 structure of ``conv`` at ``(R_out, R_in)``, weights not set."""
    r_out, r_in = ranks
    t, s, kh, kw = conv.weight.shape
    kw_ = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    first = nn.Conv2d(s, r_in, 1, bias=False, **kw_)
    core = nn.Conv2d(r_in, r_out, (kh, kw), stride=conv.stride, padding=lowrank.numeric_padding(conv),
                     dilation=conv.dilation, padding_mode=conv.padding_mode, bias=False, **kw_)
    last = nn.Conv2d(r_out, t, 1, bias=conv.bias is not None, **kw_)
    out = Tucker2Conv(first, core, last)
    out.train(conv.training)
    return out


def decompose(kernel: np.ndarray, ranks: Ranks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(core, U_out, U_in)`` of the Tucker-2 decomposition of a float64 kernel (T, S, kh, kw)."""
    from tensorly.decomposition import partial_tucker

    with tensordec.tensorly_numpy():
        (core, (u_out, u_in)), _ = partial_tucker(kernel, rank=list(ranks), modes=[0, 1], init="svd",
                                                  random_state=0)
    return np.asarray(core), np.asarray(u_out), np.asarray(u_in)


def fill(conv: nn.Conv2d, ranks: Ranks) -> tuple[Tucker2Conv, dict[str, Any]]:
    """``conv`` decomposed at ``ranks``, and its report facts (``rel_error``)."""
    k = tensordec.kernel64(conv)
    core, u_out, u_in = decompose(k, ranks)
    out = build(conv, ranks)
    as_w = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    with torch.no_grad():
        out[0].weight.copy_(torch.from_numpy(np.ascontiguousarray(u_in.T)).to(**as_w)[:, :, None, None])
        out[1].weight.copy_(torch.from_numpy(np.ascontiguousarray(core)).to(**as_w))
        out[2].weight.copy_(torch.from_numpy(np.ascontiguousarray(u_out)).to(**as_w)[:, :, None, None])
        if conv.bias is not None:
            out[2].bias.copy_(conv.bias.detach())
    approx = np.einsum("abij,ta,sb->tsij", core, u_out, u_in, optimize=True)
    rel = float(np.linalg.norm(k - approx) / max(np.linalg.norm(k), np.finfo(np.float64).tiny))
    return out, {"rel_error": rel}


def macs(conv: nn.Conv2d, ranks: Ranks, in_hw: Sequence[int], out_hw: Sequence[int]) -> int:
    """Per-image MACs of :func:`build` ``(conv, ranks)``: ``H W S R_in + H' W' R_in R_out kh kw + H' W' R_out T``."""
    r_out, r_in = ranks
    t, s, kh, kw = conv.weight.shape
    hw, ohw = in_hw[0] * in_hw[1], out_hw[0] * out_hw[1]
    return hw * s * r_in + ohw * (r_in * r_out * kh * kw + r_out * t)


def full(conv: nn.Conv2d) -> Ranks:
    t, s, kh, kw = conv.weight.shape
    return min(t, s * kh * kw), min(s, t * kh * kw)


def unfoldings(conv: nn.Conv2d) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's mode-0 (T x S kh kw) and mode-1 (S x T kh kw) unfoldings, float64."""
    import tensorly as tl

    k = tensordec.kernel64(conv)
    with tensordec.tensorly_numpy():
        return np.asarray(tl.unfold(k, 0)), np.asarray(tl.unfold(k, 1))


def spectra(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending, float64) of the two unfoldings."""
    with tensordec.tensorly_numpy():  # one BLAS thread: see rankbench.methods.lowrank.tensordec
        return tuple(torch.from_numpy(np.linalg.svd(m, compute_uv=False)) for m in unfoldings(conv))  # type: ignore[return-value]


DECOMPOSITION = tensordec.Decomposition(scheme="tucker2", reason=lambda conv: None, full=full, macs=macs,
                                        build=build, fill=fill)


def check_rule(rule: Any, field: str = "rule") -> str:
    """``vbmf`` or a ``rankbench.methods.lowrank`` rank rule, else the one-line error."""
    if rule == VBMF:
        return rule
    try:
        lowrank.parse_rule(rule, field)
    except ValueError:
        raise bad(field, rule, ACCEPTED_RULES) from None
    return rule


def layer_ranks(conv: nn.Conv2d, rule: str) -> Ranks:
    """``(R_out, R_in)`` of one conv under a per-layer rule (``vbmf`` or a lowrank rule)."""
    if rule == VBMF:
        with tensordec.tensorly_numpy():
            return tuple(min(max(vbmf_rank(m), 1), min(m.shape)) for m in unfoldings(conv))  # type: ignore[return-value]
    return tuple(lowrank.rank_from_rule(s, rule) for s in spectra(conv))  # type: ignore[return-value]


def plan_ranks(plan: tensordec.LayerPlan, rule: str) -> list[Ranks]:
    """Ranks of every chosen layer of ``plan`` under ``rule`` (``speedup:S`` fits the whole model)."""
    convs = [plan.modules[plan.reports[i]["name"]] for i in plan.chosen]
    if rule == VBMF or not lowrank.parse_rule(rule).is_global:
        return [layer_ranks(c, rule) for c in convs]
    layer_spectra = [spectra(c) for c in convs]

    def ranks_at(e: float) -> list[Ranks]:
        if e <= 0:
            return [(1, 1)] * len(layer_spectra)
        return [tuple(lowrank.rank_from_rule(s, lowrank.Rule("energy", min(e, 1.0))) for s in pair)
                for pair in layer_spectra]  # type: ignore[misc]

    return tensordec.fit_speedup(plan, lowrank.parse_rule(rule).value, ranks_at, top=1.0)


@register("tucker2")
class Tucker2(Method):
    """Tucker-2 decomposition (Kim et al., ICLR 2016) of the trained baseline, ranks by VBMF or a rule."""

    starts_from_baseline = True

    def __init__(self, rule: str = VBMF, finetune_epochs: int = 0, layers: str = "official",
                 include_stride2: bool = True) -> None:
        check_rule(rule)
        check("finetune_epochs", finetune_epochs, is_int(finetune_epochs) and finetune_epochs >= 0, "an int >= 0")
        check("layers", layers, layers in lowrank.LAYER_CHOICES, ", ".join(lowrank.LAYER_CHOICES))
        check("include_stride2", include_stride2, isinstance(include_stride2, bool), "true or false")
        self.rule, self.finetune_epochs = rule, finetune_epochs
        self.layers, self.include_stride2 = layers, include_stride2
        self._reports: list[dict[str, Any]] = []

    def _plan(self, model: nn.Module) -> tensordec.LayerPlan:
        return tensordec.plan_layers(model, DECOMPOSITION, self.layers, self.include_stride2,
                                     self.example_input(model))

    def choose_layers(self, model: nn.Module) -> list[tuple[str, Any]]:
        """The convs compress() decomposes (None) or why each stays dense."""
        return tensordec.choose_layers(model, DECOMPOSITION, self.layers, self.include_stride2)

    def attach(self, model: nn.Module, ctx: Context) -> None:
        self.check_reachable(model, self.example_input(model))   # out of reach: fail before training

    def check_reachable(self, model: nn.Module, example_input: torch.Tensor) -> None:
        """Fail (one line naming ``rule``) when a ``speedup:S`` rule is out of reach even at rank
        (1, 1) on every chosen layer; ``rankbench.bench.preflight.model`` calls it on the untrained
        network when the spec is read, :meth:`attach` again before training."""
        if self.rule != VBMF and lowrank.parse_rule(self.rule).is_global:
            plan = tensordec.plan_layers(model, DECOMPOSITION, self.layers, self.include_stride2, example_input)
            tensordec.check_speedup(plan, lowrank.parse_rule(self.rule).value, [(1, 1)] * len(plan.chosen))

    def compress(self, model: nn.Module) -> nn.Module:
        plan = self._plan(model)
        small = tensordec.decompose_planned(model, plan, plan_ranks(plan, self.rule))
        self._reports = plan.reports
        return small

    def rebuild(self, model: nn.Module, layers: Sequence[dict[str, Any]]) -> nn.Module:
        """The structure :meth:`compress` produced, from its report's layers, weights unset:
        a saved state dict of the compressed model loads into it."""
        return tensordec.rebuild(model, layers, [DECOMPOSITION])

    def report(self) -> MethodReport:
        return MethodReport(layers=list(self._reports), scheme="tucker2", rule=self.rule)
