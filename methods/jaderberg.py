"""``jaderberg``: spatial decomposition with data reconstruction (Jaderberg, Vedaldi, Zisserman,
"Speeding up Convolutional Neural Networks with Low Rank Expansions", BMVC 2014, scheme 2).

Starts from the trained baseline. Every chosen conv ``K`` (N, C, kh, kw) becomes a ``kh x 1``
conv ``C -> r`` (factor ``A``) then a ``1 x kw`` conv ``r -> N`` (factor ``B``): the ``spatial``
scheme. The paper's "filter reconstruction" is the spatial SVD (``svd`` with ``scheme: spatial``);
this is its "data reconstruction": the factors are fitted to the layer's responses on
``calibration`` batches of the training split, by least squares, starting from the spatial SVD.

With ``P`` the layer's input patches (im2col, D = C*kh*kw rows), the response error of a kernel
``K`` is ``||(K - K0) P||^2 = tr((K - K0) S (K - K0)^T)``, ``S = P P^T / pixels``: the fit only
needs ``S``. It alternates exact least-squares steps (the objective never increases):

- ``B`` given ``A``: a linear system of size ``r*kw`` shared by all N outputs;
- ``A`` given ``B``: a linear system of size ``C*kh*r``, solved by conjugate gradients from the
  current ``A`` (matrix-free: products with ``S``).

``iterations`` such rounds run per layer; the report's ``method_info.fit`` gives, per layer, the
relative response error of the SVD start and of the fit on the calibration data. Ranks come from
the ``rule`` as for ``svd`` with the spatial scheme (``speedup:S`` matches MACs); the structure
is the spatial scheme's, so at full rank the pair reproduces the layer exactly.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rankbench.bench.checks import is_int
from rankbench.methods import lowrank
from rankbench.methods.api.base import check_param
from rankbench.methods.api.calibration import Collector
from rankbench.methods.svd import DataDriven
from rankbench.methods.api.registry import register

CG_STEPS = 50   # conjugate-gradient steps per A-step (an exact solve for small layers)


def patches(conv: nn.Conv2d, x: Tensor) -> Tensor | None:
    """The conv's input patches ``(batch * pixels, C*kh*kw)`` (rows ordered like
    ``weight.reshape(N, -1)``), or None for a padding unfold cannot express (asymmetric 'same')."""
    pad: Any = conv.padding
    if pad == "valid":
        pad = (0, 0)
    elif pad == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            return None
        pad = tuple(t // 2 for t in total)
    if conv.padding_mode != "zeros":
        ph, pw = lowrank.schemes.pair(pad)
        x = F.pad(x, (pw, pw, ph, ph), mode=conv.padding_mode)
        pad = (0, 0)
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def compose(a: Tensor, b: Tensor) -> Tensor:
    """The kernel ``(N, C*kh*kw)`` of factors ``a`` (C*kh, r) and ``b`` (r, N, kw)."""
    r, n, kw = b.shape
    return (a @ b.reshape(r, n * kw)).reshape(-1, n, kw).transpose(0, 1).reshape(n, -1)


def back(sk: Tensor, b: Tensor) -> Tensor:
    """``sum_{n,j} sk[n, x, j] b[r, n, j]`` (x, r): the transpose of :func:`compose` in ``a``."""
    r, n, kw = b.shape
    return sk.reshape(n, -1, kw).transpose(0, 1).reshape(-1, n * kw) @ b.reshape(r, n * kw).T


Moment = Callable[[Tensor], Tensor]   # X -> X @ S, S the input patches' second moment


def moment(s: Tensor) -> Moment:
    """``X -> X @ S`` for ``s`` = S (D x D), or for ``s`` a factor ``F`` (D x m, m < D) with
    ``S = F F^T``: with fewer calibration pixels than D (e.g. a few images), two thin products
    cost less than one with the D x D matrix."""
    if s.shape[0] == s.shape[1]:
        return lambda x: x @ s
    return lambda x: (x @ s) @ s.T


def error(a: Tensor, b: Tensor, k0: Tensor, op: Moment) -> float:
    """``tr((K - K0) S (K - K0)^T)`` for ``K`` = compose(a, b)."""
    e = compose(a, b) - k0
    return float((op(e) * e).sum())


def step_b(a: Tensor, k0: Tensor, op: Moment, kw: int) -> Tensor:
    """The least-squares ``b`` for fixed ``a``: ``G = A (x) I_kw`` maps ``b``'s (r, kw) to the kernel's (C*kh, kw)."""
    g = torch.kron(a, torch.eye(kw, dtype=a.dtype, device=a.device))     # (D, r*kw)
    gs = op(g.T)                                                         # G^T S (S is symmetric)
    h = gs @ g
    rhs = gs @ k0.T                                                      # (r*kw, N)
    ridge = 1e-12 * float(h.diagonal().mean().clamp_min(1e-300))
    sol = torch.linalg.solve(h + ridge * torch.eye(h.shape[0], dtype=h.dtype, device=h.device), rhs)
    r = a.shape[1]
    return sol.reshape(r, kw, -1).permute(0, 2, 1).contiguous()          # (r, N, kw)


def step_a(a: Tensor, b: Tensor, k0: Tensor, op: Moment, steps: int = CG_STEPS) -> Tensor:
    """The least-squares ``a`` for fixed ``b``, by conjugate gradients started at ``a``."""
    def hess(da: Tensor) -> Tensor:   # the normal-equations operator, matrix-free
        return back(op(compose(da, b)), b)

    rhs = back(op(k0), b)
    x = a.clone()
    r = rhs - hess(x)
    p = r.clone()
    rs = float((r * r).sum())
    stop = 1e-14 * max(float((rhs * rhs).sum()), 1e-300)   # relative residual 1e-7
    for _ in range(steps):
        if rs <= stop:
            break
        hp = hess(p)
        php = float((p * hp).sum())
        if php <= 0:
            break
        alpha = rs / php
        x = x + alpha * p
        r = r - alpha * hp
        rs_new = float((r * r).sum())
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def fit_spatial(conv: nn.Conv2d, fact: lowrank.Factorized, s: Tensor, iterations: int) -> dict[str, float]:
    """Fit ``fact`` (the spatial scheme's pair for ``conv``, holding the SVD factors) to the input
    second moment ``s`` (D x D, or a thin factor: see :func:`moment`; float64) by alternating
    least squares; keep the best factors."""
    first, second = fact[0], fact[1]
    n, c, kh, kw = conv.weight.shape
    r = first.out_channels
    op = moment(s.to(conv.weight.device))
    k0 = conv.weight.detach().double().reshape(n, -1)
    a = first.weight.detach().double()[..., 0].reshape(r, c * kh).T.contiguous()   # (C*kh, r)
    b = second.weight.detach().double()[:, :, 0, :].permute(1, 0, 2).contiguous()  # (r, N, kw)
    scale = float((op(k0) * k0).sum())
    start = best = error(a, b, k0, op)
    best_ab = (a, b)
    for _ in range(iterations):
        b = step_b(a, k0, op, kw)
        a = step_a(a, b, k0, op)
        e = error(a, b, k0, op)
        if e < best:
            best, best_ab = e, (a, b)
    a, b = best_ab
    first.weight.copy_(a.T.reshape(r, c, kh, 1).to(first.weight))
    second.weight.copy_(b.permute(1, 0, 2).unsqueeze(2).to(second.weight))
    rel = (lambda v: v / scale if scale > 0 else 0.0)
    return {"svd": rel(start), "fit": rel(best)}


@register("jaderberg")
class Jaderberg(DataDriven):
    """Spatial (kh x 1, 1 x kw) decomposition fitted to each conv's responses on calibration data (Jaderberg et al. 2014)."""

    scheme = "spatial"

    def __init__(self, rule: str = "speedup:2.0", calibration: int = 8, iterations: int = 5,
                 finetune_epochs: int = 0, layers: str = "official", include_stride2: bool = True) -> None:
        super().__init__(rule, calibration, finetune_epochs, layers, include_stride2)
        check_param("iterations", iterations, is_int(iterations) and iterations >= 0,
                    "an int >= 0 (alternating least-squares rounds per layer; 0 = the spatial SVD)")
        self.iterations = int(iterations)

    def collector(self, stats: dict[str, Any]) -> Collector:
        def add(name: str, mod: nn.Module, inp: Tensor, out: Tensor) -> None:
            p = patches(mod, inp.detach())
            if p is None:
                stats[name] = None
                return
            p = p.double()
            s = stats.setdefault(name, {"pp": 0.0, "n": 0, "rows": []})
            if s is not None:
                s["pp"] = s["pp"] + p.T @ p
                s["n"] += p.shape[0]
                # few pixels (fewer than D/2): keep them, the fit then works with the thin factor
                keep = s["rows"] is not None and s["n"] < p.shape[1] // 2
                s["rows"] = s["rows"] + [p] if keep else None
        return add

    def refit(self, dense: nn.Module, fact: lowrank.Factorized, stats: Any) -> dict[str, float]:
        if stats is None:   # a padding unfold cannot express: the spatial SVD stays
            return {"skipped": 1.0}
        if stats["rows"] is not None:
            factor = torch.cat(stats["rows"]).T / stats["n"] ** 0.5      # S = factor @ factor.T
            return fit_spatial(dense, fact, factor, self.iterations)
        return fit_spatial(dense, fact, stats["pp"] / stats["n"], self.iterations)
