"""Weights at the ranks TRP reaches in practice: "paper-ranks, constructed spectra".

TRP's cost depends on the ranks it keeps (the ``warm`` solver's block is rank + 4 vectors; the
projection's products grow with the rank), so its speed is measured on weights whose energy-0.9
ranks (the rule TRP projects with) give the MAC speed-ups the paper exports
(:data:`PAPER_SPEEDUPS`). The weights are built, not trained: per layer ``U diag(s) V^T`` with
random orthogonal ``U``, ``V`` (fixed seed) and a constructed spectrum ``s``.

The spectrum is the shape a layer has when TRP's ranks hold steady at ``period: 1``: the head
the previous projection kept (r values, decaying by ``e`` over the head) over a tail that one
training step regrew (the spectrum of a random matrix on the complement). For the energy-0.9
rule to keep the same r again, the tail must hold what the rule removes, so the head holds just
over 90% of the energy (``cum[r-1] < 0.9 <= cum[r]``) and the tail the rest. The gap at the cut
that this leaves (the head's last value 1.4-1.9x the tail's first on ResNet-20/50) is what the
``warm`` solver's convergence depends on; weights TRP has cut to about 10 ranks per layer
(``trp_steady_weights``) have a far wider one. One rank fraction per model (a "cut", found by
bisection) sets every layer's r so that the TRP layers' conv MACs, dense over factorized
(``lowrank.factorized_macs``, a layer whose factorized form would cost more stays dense),
come as close to the target as the rank steps allow.

:func:`trp_steady_weights` makes the other kind of TRP weights the benchmarks time: what
repeated projection of He-initialised weights leaves (about 10 ranks per layer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from rankbench.methods import lowrank

# MAC speed-ups TRP+Nu exports in the official TRP repository's README (ResNet-20 CIFAR-10:
# channel 2.17x, spatial 2.84x; ResNet-50 ImageNet: channel 1.80x and 2.23x)
PAPER_SPEEDUPS: dict[tuple[str, str], tuple[float, ...]] = {
    ("resnet20", "channel"): (2.17,),
    ("resnet20", "spatial"): (2.84,),
    ("resnet50", "channel"): (1.80, 2.23),
}
ENERGY = 0.9          # the rule TRP projects with
HEAD_DECAY = 1.0      # the head's values fall by exp(-HEAD_DECAY) from first to last
TAIL_DECAY = 2.0      # and the tail's by exp(-TAIL_DECAY)
SOURCE = "constructed spectra"
# the random step (relative to the weights' norm) each timed copy of the paper-rank weights gets
# (perturbed), so consecutive copies lie about 1.4x this apart, as consecutive training steps:
# 1e-3 is the middle of the CIFAR recipe (lr 0.01); at lr 0.1, its first half, SGD moves
# ResNet-20's TRP layers by 1-2e-2 per step (BENCHMARKS.md)
STEP_SIZE = 1e-3


@dataclass(frozen=True)
class LayerCost:
    """A TRP layer's matrix shape under the scheme and its conv MACs per image, dense and per rank."""

    name: str
    rows: int
    cols: int
    dense: int
    per_rank: int     # factorized MACs are linear in the rank for the channel and spatial schemes

    @property
    def full(self) -> int:
        return min(self.rows, self.cols)

    def macs(self, rank: int) -> int:
        return min(self.dense, self.per_rank * rank)


def layer_costs(model: nn.Module, scheme: str, example_input: Tensor) -> list[LayerCost]:
    """One :class:`LayerCost` per layer TRP projects (``lowrank.layer_choice``, official set)."""
    names = [n for n, why in lowrank.layer_choice(model, scheme) if why is None]
    probes, _ = lowrank.probe_layers(model, example_input)
    out = []
    for n in names:
        mod, p = model.get_submodule(n), probes[n]
        rows, cols = lowrank.to_matrix(mod.weight.detach(), scheme).shape[-2:]
        dense = lowrank.dense_macs(mod, p.out_hw, p.out_rows) * p.calls
        one = lowrank.factorized_macs(mod, scheme, 1, p.out_hw, p.in_hw, p.out_rows) * p.calls
        out.append(LayerCost(n, rows, cols, dense, one))
    return out


def speedup_at(costs: Sequence[LayerCost], ranks: Sequence[int]) -> float:
    """The TRP layers' conv MACs, dense over factorized at ``ranks``."""
    return sum(c.dense for c in costs) / sum(c.macs(r) for c, r in zip(costs, ranks))


def steady_spectrum(rows: int, cols: int, rank: int, energy: float = ENERGY, seed: int = 0) -> Tensor:
    """``min(rows, cols)`` singular values (float64, descending, unit energy) of a ``rows x cols``
    layer whose ``energy`` rule keeps exactly ``rank``, where the tail can hold the rest (see
    the module docstring): the head decays by ``exp(-HEAD_DECAY)``; the tail is one step's
    regrowth, a random Gaussian matrix's spectrum on the complement ``(rows - rank) x
    (cols - rank)``. A rank the construction cannot honour (rank near the full rank) comes out
    as the rule's own answer."""
    p = min(rows, cols)
    rank = max(1, min(rank, p))
    head = torch.exp(-HEAD_DECAY * torch.arange(rank, dtype=torch.float64) / max(1, rank - 1))
    share = head.square() / head.square().sum()           # each head value's share of the head
    last = float(share[-1])
    # head energy E with E - E*last < energy <= E: E = energy / (1 - last/2), at most the midpoint
    # of what still leaves a tail
    head_e = min(energy / (1 - last / 2), (energy + 1) / 2) if rank < p else 1.0
    if rank < p:
        g = torch.Generator().manual_seed(seed)
        tail = torch.linalg.svdvals(torch.randn(rows - rank, cols - rank, generator=g, dtype=torch.float64))
        tail_share = tail.square() / tail.square().sum() * (1 - head_e)
    else:
        tail_share = torch.zeros(0, dtype=torch.float64)
    s2 = torch.cat([share * head_e, tail_share])
    return s2.sort(descending=True).values.sqrt()


def ranks_for_fraction(costs: Sequence[LayerCost], fraction: float) -> list[int]:
    """Every layer's head keeps ``fraction`` of its full rank (at least 1): the ranks the
    energy-0.9 rule keeps on :func:`steady_spectrum` (checked on the built spectra)."""
    return [max(1, min(c.full, round(fraction * c.full))) for c in costs]


def fraction_for_speedup(costs: Sequence[LayerCost], target: float) -> tuple[float, list[int], float]:
    """The rank fraction (bisection) whose ranks bring the TRP layers' MAC speed-up closest to
    ``target``; returns it, the ranks and the speed-up they give."""
    lo, hi = 0.0, 1.0                      # speed-up falls as the fraction grows
    for _ in range(40):
        mid = (lo + hi) / 2
        if speedup_at(costs, ranks_for_fraction(costs, mid)) >= target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda f: abs(speedup_at(costs, ranks_for_fraction(costs, f)) - target))
    ranks = ranks_for_fraction(costs, best)
    return best, ranks, speedup_at(costs, ranks)


@dataclass
class PaperRanks:
    """Weights of a model's TRP layers at a paper-level speed-up, and how they were made."""

    model: str
    scheme: str
    target: float
    speedup: float             # what the constructed ranks give (TRP layers' conv MACs)
    ranks: list[int]
    names: list[str]
    weights: list[Tensor]      # each in its layer's shape, dtype and device

    def describe(self) -> str:
        return f"paper-ranks {self.target:g}x ({SOURCE})"


def paper_rank_weights(model: nn.Module, name: str, scheme: str, target: float, example_input: Tensor,
                       seed: int = 0) -> PaperRanks:
    """Weights for ``model``'s TRP layers (``name`` labels them) whose energy-0.9 ranks give
    ``target`` by MACs: ``U diag(s) V^T``, ``U``, ``V`` random orthogonal (``seed``), ``s`` from
    :func:`steady_spectrum`, scaled to each layer's current Frobenius norm so activations keep
    their scale."""
    costs = layer_costs(model, scheme, example_input)
    fraction, heads, _ = fraction_for_speedup(costs, target)
    g = torch.Generator().manual_seed(seed)
    weights, kept = [], []
    for c, head in zip(costs, heads):
        w = model.get_submodule(c.name).weight.detach()
        s = steady_spectrum(c.rows, c.cols, head, seed=seed)
        kept.append(lowrank.rank_from_rule(s, f"energy:{ENERGY}"))
        u = torch.linalg.qr(torch.randn(c.rows, c.full, generator=g, dtype=torch.float64)).Q
        v = torch.linalg.qr(torch.randn(c.cols, c.full, generator=g, dtype=torch.float64)).Q
        mat = (u * (s * float(w.double().norm()))) @ v.T
        weights.append(lowrank.from_matrix(mat, scheme, w.shape).to(w.device, w.dtype))
    return PaperRanks(name, scheme, target, speedup_at(costs, kept), kept, [c.name for c in costs], weights)


def perturbed(weights: Sequence[Tensor], count: int, noise: float = STEP_SIZE, seed: int = 1) -> list[list[Tensor]]:
    """``count`` copies of ``weights``, each plus its own small random step (``noise`` times the
    weight's RMS per element, so about ``noise`` of its norm): consecutive training steps as
    TRP's projection sees them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        out.append([w + (noise * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g, dtype=w.dtype)
                         ).to(w.device) for w in weights])
    return out


def ranks_of(subgrads: Sequence[Tensor], scheme: str) -> list[int]:
    """Ranks a projection kept, read from its sub-gradients ``U_r V_r^T`` (exactly r singular values are 1)."""
    return [int((torch.linalg.svdvals(lowrank.to_matrix(g.double().cpu(), scheme)) > 0.5).sum()) for g in subgrads]


def trp_steady_weights(weights: Sequence[torch.Tensor], scheme: str, rule: lowrank.Rule, steps: int = 30,
                       noise: float = 1e-3) -> list[torch.Tensor]:
    """Weights as period-1 TRP leaves them: projected at every step with a small random update
    between (``noise`` times the weight's RMS per element), so the spectrum has the few large
    values over a small tail that TRP training produces. The cost of the ``warm`` solver depends
    on it; He-initialised weights (full spectrum, no gap) are its worst case."""
    g = torch.Generator(device=weights[0].device).manual_seed(0)
    out = [w.clone() for w in weights]
    for _ in range(steps):
        out, _ = lowrank.project(out, scheme, rule, with_subgradient=False, solver="gram")
        out = [w + noise * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g, device=w.device, dtype=w.dtype)
               for w in out]
    return out
