"""Analytic empirical variational Bayesian matrix factorization (EVBMF) as a rank estimate.

Nakajima, Sugiyama, Babacan and Tomioka, "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 14 (2013). For an ``L x M`` matrix ``V`` (``L <= M``; a
tall matrix is transposed) observed as a low-rank signal plus i.i.d. Gaussian noise of unknown
variance ``sigma^2``, the empirical VB solution keeps the singular component ``h`` exactly when

    gamma_h^2 / (M sigma^2) > x_ = (1 + tau_) (1 + alpha / tau_),      alpha = L / M,

where ``tau_`` is the positive zero of ``phi(tau) + phi(tau / alpha)``, ``phi(z) = log(z + 1) / z - 1/2``
(``tau_ ~= 2.5129 sqrt(alpha)``). The noise variance is the minimizer of the paper's objective

    Omega(sigma^2) = sum_h psi(gamma_h^2 / (M sigma^2)),   psi(x) = psi0(x) + [x > x_] psi1(x),
    psi0(x) = x - log x,   psi1(x) = log(tau(x) + 1) + alpha log(tau(x) / alpha + 1) - tau(x),
    tau(x) = ((x - 1 - alpha) + sqrt((x - 1 - alpha)^2 - 4 alpha)) / 2,

(no upper bound on the rank, so every component takes part). ``Omega`` need not be convex in
``sigma^2``: it is evaluated on a log grid spanning twelve decades below the largest admissible
variance ``|V|_F^2 / (L M)`` (every component noise), and the best grid point is refined by a
bounded scalar search between its neighbours.

The estimated rank is the number of kept components. Kim et al. (ICLR 2016) take it on the
mode-0 and mode-1 unfoldings of a conv kernel as the Tucker-2 ranks (``rankbench.methods.tucker2``).

Public API: :func:`vbmf`, :class:`VBMFResult`, :func:`vbmf_rank`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar

GRID_DECADES = 12      # the variance search spans this many decades below |V|_F^2 / (L M)
GRID_PER_DECADE = 40   # grid points per decade before the bounded refinement


@dataclass(frozen=True)
class VBMFResult:
    """EVBMF's answer for one matrix: the kept rank, the estimated noise variance and the
    singular-value threshold ``sigma sqrt(M x_)`` above which a component is kept."""

    rank: int
    sigma2: float
    threshold: float


def _tau_bar(alpha: float) -> float:
    """The positive zero of ``phi(tau) + phi(tau / alpha)``, ``phi(z) = log(z + 1) / z - 1/2``."""
    def xi(t: float) -> float:
        return math.log1p(t) / t + math.log1p(t / alpha) / (t / alpha) - 1.0

    # xi(0+) = 1 > 0 and xi decreases to -1: one sign change, bracketed around 2.5129 sqrt(alpha)
    return brentq(xi, 1e-3 * math.sqrt(alpha), 100.0 * math.sqrt(alpha) + 10.0, xtol=1e-14, rtol=1e-14)


def _omega(gamma2: np.ndarray, m: int, alpha: float, x_bar: float, sigma2: np.ndarray) -> np.ndarray:
    """``Omega`` at each variance in ``sigma2`` (1-D); ``gamma2`` the squared singular values."""
    x = gamma2[None, :] / (m * sigma2[:, None])                      # (grid, L)
    psi = x - np.log(x)
    big = x > x_bar
    d = np.where(big, x - 1.0 - alpha, 0.0)
    tau = 0.5 * (d + np.sqrt(np.maximum(d * d - 4.0 * alpha, 0.0)))
    psi1 = np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau
    return np.where(big, psi + psi1, psi).sum(axis=1)


def vbmf(matrix: Union[torch.Tensor, np.ndarray]) -> VBMFResult:
    """EVBMF of a 2-D matrix (float64 on CPU): its rank estimate, noise variance and threshold.

    An all-zero matrix has rank 0. The rank may be 0 for pure noise: a caller that needs at
    least one component clamps it."""
    v = matrix.detach().to("cpu", torch.float64).numpy() if isinstance(matrix, torch.Tensor) \
        else np.asarray(matrix, dtype=np.float64)
    if v.ndim != 2 or min(v.shape) < 1:
        raise ValueError(f"matrix: shape {tuple(v.shape)}; accepted: a 2-D matrix with both sides >= 1")
    if not np.isfinite(v).all():
        raise ValueError("matrix: has NaN or inf entries; accepted: a finite matrix")
    l, m = sorted(v.shape)
    gamma = np.linalg.svd(v, compute_uv=False)
    gamma2 = gamma * gamma
    total = float(gamma2.sum())
    if total == 0.0:
        return VBMFResult(rank=0, sigma2=0.0, threshold=0.0)
    alpha = l / m
    tb = _tau_bar(alpha)
    x_bar = (1.0 + tb) * (1.0 + alpha / tb)
    hi = total / (l * m)
    grid = hi * np.logspace(-GRID_DECADES, 0.0, GRID_DECADES * GRID_PER_DECADE + 1)
    values = _omega(gamma2, m, alpha, x_bar, grid)
    i = int(np.argmin(values))
    lo_b, hi_b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best, best_val = float(grid[i]), float(values[i])
    if hi_b > lo_b:
        res = minimize_scalar(lambda s: float(_omega(gamma2, m, alpha, x_bar, np.array([s]))[0]),
                              bounds=(lo_b, hi_b), method="bounded", options={"xatol": lo_b * 1e-10})
        if res.success and float(res.fun) < best_val:
            best = float(res.x)
    threshold = math.sqrt(best * m * x_bar)
    return VBMFResult(rank=int((gamma > threshold).sum()), sigma2=best, threshold=threshold)


def vbmf_rank(matrix: Union[torch.Tensor, np.ndarray]) -> int:
    """The number of components EVBMF keeps in ``matrix`` (see :func:`vbmf`)."""
    return vbmf(matrix).rank
