"""Analytic empirical VBMF (rankbench.methods.lowrank.vbmf): the rank of a low-rank-plus-noise matrix is recovered."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rankbench.methods.lowrank.vbmf import vbmf, vbmf_rank


def _low_rank_plus_noise(rows: int, cols: int, rank: int, sigma: float, seed: int) -> np.ndarray:
    """``U diag(s) V^T + sigma * N(0, 1)`` with the signal's singular values 3-6 times the
    largest singular value of the noise (about ``sigma (sqrt(rows) + sqrt(cols))``)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((rows, rank)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, rank)))
    s = np.linspace(3.0, 6.0, rank) * sigma * (np.sqrt(rows) + np.sqrt(cols))
    return u @ np.diag(s) @ v.T + sigma * rng.standard_normal((rows, cols))


@pytest.mark.parametrize("rows,cols,rank,sigma,seed", [
    (30, 50, 5, 1.0, 0),
    (50, 30, 5, 1.0, 1),       # tall: the same estimate as its transpose
    (64, 576, 10, 0.1, 2),     # a conv kernel's mode-0 unfolding: 64 x (64*3*3)
    (100, 100, 20, 1.0, 3),
    (16, 144, 3, 0.5, 4),
    (200, 80, 12, 2.0, 5),
])
def test_vbmf_recovers_the_rank_and_the_noise_level(rows, cols, rank, sigma, seed):
    m = _low_rank_plus_noise(rows, cols, rank, sigma, seed)
    res = vbmf(m)
    assert res.rank == rank
    assert res.sigma2 == pytest.approx(sigma ** 2, rel=0.15)
    # every kept singular value is above the threshold, every dropped one below it
    s = np.linalg.svd(m, compute_uv=False)
    assert s[rank - 1] > res.threshold > s[rank]
    assert vbmf_rank(torch.from_numpy(m).float()) == rank      # a torch tensor works too
    assert vbmf(m.T).rank == rank


def test_vbmf_pure_noise_and_zero_matrix_have_rank_zero():
    noise = np.random.default_rng(0).standard_normal((40, 60))
    assert vbmf(noise).rank == 0
    assert vbmf(np.zeros((5, 7))).rank == 0


def test_vbmf_rejects_what_is_not_a_finite_matrix():
    with pytest.raises(ValueError, match=r"^matrix: shape \(3,\); accepted: a 2-D matrix"):
        vbmf(np.ones(3))
    with pytest.raises(ValueError, match="^matrix: has NaN or inf"):
        vbmf(np.array([[1.0, np.nan], [0.0, 1.0]]))
