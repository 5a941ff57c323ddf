"""Rank rules: how many singular values a layer keeps.

Rules are strings so a spec can grid-expand and hash them:
``energy:0.9`` ``value:0.05`` ``ratio:0.5`` ``rank:8`` ``entropy:0.9`` ``speedup:2.0``.
``speedup`` is a whole-model rule: one global energy threshold, found by bisection, so the
model's MACs hit ``dense / speedup`` (see :func:`rankbench.methods.lowrank.decompose.decompose_model`).
Every per-layer rule is applied as a mask on the spectrum, so it stays on the device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from rankbench.bench.checks import bad

RULE_KINDS: tuple[str, ...] = ("energy", "value", "ratio", "rank", "entropy", "speedup")
ACCEPTED_RULES = ('"energy:E" (0<E<=1), "value:T" (T>=0), "ratio:Q" (0<Q<=1), "rank:R" (int R>=1), '
                  '"entropy:TAU" (0<TAU<=1), "speedup:S" (S>1)')


@dataclass(frozen=True)
class Rule:
    """A parsed rank rule: ``kind`` in :data:`RULE_KINDS`, ``value`` its parameter."""

    kind: str
    value: float

    def __str__(self) -> str:
        v = int(self.value) if self.kind == "rank" else self.value
        return f"{self.kind}:{v}"

    @property
    def is_global(self) -> bool:
        """True for rules that need the whole model (MAC budget), not one spectrum."""
        return self.kind == "speedup"


def parse_rule(text: Union[str, Rule], field: str = "rule") -> Rule:
    """Parse ``"kind:value"``; bad input -> ``rankbench.bench.checks.UserError`` naming ``field``, the value and what is accepted."""
    if isinstance(text, Rule):
        return text
    if not isinstance(text, str) or ":" not in text:
        raise bad(field, text, ACCEPTED_RULES)
    kind, _, raw = text.partition(":")
    kind = kind.strip().lower()
    if kind not in RULE_KINDS:
        raise bad(field, text, ACCEPTED_RULES, f"unknown kind {kind!r}")
    try:
        value = float(raw)
    except ValueError:
        raise bad(field, text, ACCEPTED_RULES, f"value {raw!r} is not a number") from None
    ok = math.isfinite(value) and {
        "energy": 0.0 < value <= 1.0,
        "entropy": 0.0 < value <= 1.0,
        "ratio": 0.0 < value <= 1.0,
        "value": value >= 0.0,
        "rank": value >= 1 and value == int(value),
        "speedup": value > 1.0,   # 1.0 would compress nothing: not a target
    }[kind]
    if not ok:
        raise bad(field, text, ACCEPTED_RULES, "out of range")
    return Rule(kind, value)


def _first_k_mask(cum: Tensor, threshold: Union[float, Tensor]) -> Tensor:
    """Keep index i while the cumulative score *before* i is below the threshold: this is
    'smallest k with cum[k-1] >= threshold', written as a mask so it never leaves the device."""
    before = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], dim=-1)
    return before < threshold


def rank_mask(s: Tensor, rule: Union[str, Rule]) -> Tensor:
    """Boolean mask ``(..., k)`` of the singular values kept by ``rule``; ``s`` sorted descending
    along the last dim. Pure tensor ops (no ``.item()``), so it stays asynchronous on a GPU.
    At least one value is always kept, so no layer collapses to rank 0."""
    rule = parse_rule(rule)
    k = s.shape[-1]
    idx = torch.arange(k, device=s.device)
    # Rules computed in float64 at least, so thresholds like 0.9 compare as written.
    sd = s.to(torch.float64) if s.dtype in (torch.float16, torch.bfloat16, torch.float32) else s
    if rule.kind == "energy":
        e2 = sd * sd
        total = e2.sum(-1, keepdim=True)
        # an all-zero layer has all its (zero) energy at k=1: rank 1, not full rank or NaN
        cum = torch.where(total > 0, e2.cumsum(-1) / total.clamp_min(torch.finfo(sd.dtype).tiny), 1.0)
        mask = _first_k_mask(cum, rule.value)
    elif rule.kind == "entropy":
        p = sd / sd.sum(-1, keepdim=True).clamp_min(torch.finfo(sd.dtype).tiny)
        h = torch.where(p > 0, -p * torch.log(p.clamp_min(torch.finfo(sd.dtype).tiny)), torch.zeros_like(p))
        total = h.sum(-1, keepdim=True)
        mask = _first_k_mask(h.cumsum(-1), rule.value * total)
    elif rule.kind == "value":
        mask = sd >= rule.value
    elif rule.kind in ("ratio", "rank"):
        r = math.ceil(rule.value * k) if rule.kind == "ratio" else int(rule.value)
        mask = (idx < min(max(r, 1), k)).expand(s.shape)
    else:
        raise bad("rule", str(rule), "a per-layer rule: energy, value, ratio, rank, entropy",
                  "a whole-model rule, applied by decompose_model(..., example_input=...)")
    return mask | (idx == 0)


def rank_from_rule(s: Tensor, rule: Union[str, Rule]) -> int:
    """Rank kept by ``rule`` for one 1-D spectrum ``s`` (sorted descending). Host sync: not for hot loops."""
    if s.dim() != 1:
        raise ValueError(f"s: expected a 1-D spectrum, got shape {tuple(s.shape)}")
    return int(rank_mask(s, rule).sum())

