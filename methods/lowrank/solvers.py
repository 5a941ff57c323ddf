"""The batched projection used during training: every weight onto its low-rank set under a rule.

:func:`project` stacks the matrices of one shape and projects them in one call, without host
sync, through a solver: ``svd`` (exact), ``gram`` (eigendecomposition of the small Gram matrix),
``warm`` (started from the previous call's factors, kept in a :class:`WarmStart`, which a
method checkpoints through :meth:`WarmStart.state_dict`; certified, else gram), or ``auto``
(on the CPU warm where a state is kept; else gram where the matrices are wide, svd elsewhere).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from rankbench.bench.checks import bad

from rankbench.methods.lowrank.rules import Rule, parse_rule, rank_mask
from rankbench.methods.lowrank.schemes import from_matrix, svd_threads, to_matrix


SOLVERS: tuple[str, ...] = ("svd", "gram", "auto", "warm")
# "auto" uses the Gram solver where one side is at least this many times the other: the Gram
# matrix is then small; on square-ish matrices the float64 eigensolve costs as much as the SVD
# (measured on CPU in BENCHMARKS.md)
AUTO_GRAM_ASPECT = 2.0
# LAPACK/cuSOLVER drivers torch.linalg.svd takes on CUDA only; "svd-gesvdj" etc. pick one
CUDA_SVD_DRIVERS: tuple[str, ...] = ("gesvd", "gesvdj", "gesvda")

# "warm": TRP at period 1 projects almost the same weights at every step, so the previous step's
# top eigenvectors of the Gram matrix A = X X^T start a filtered subspace iteration that needs a
# few products with A, and a k x k eigensolve (k = largest rank + WARM_GUARD) replaces the m x m one.
# Its answer is certified, not trusted (see warm_eigs): one Cholesky factorization proves that no
# eigenvalue outside the kept block lies above a split point, and a residual bound then puts the
# kept subspace within the tolerance of the exact one; where only that bound falls short, a square
# group filters its block once more. Anywhere the certificate still fails the group runs the full
# solve instead, and waits a few calls before trying again (WARM_BACKOFF_MAX). The filter's degree
# adapts per group to the size of the steps between calls (WARM_DEGREES).
WARM_ITERS = 3          # the filter's first degree: products with A per pass (then one QR)
WARM_DEGREES = (2, 8)   # the range the degree adapts in: one up after a call that needed a second
                        # pass or failed, one down where a degree less is predicted to certify
WARM_SLACK = 0.3        # ... with its angle bound at most this share of the tolerance (room for
                        # the steps between calls to vary)
WARM_TOL = 1e-5         # certified sin(angle) to the exact top-r subspace, float32 weights (the
                        # float32 SVD itself is off by up to 7e-6 on TRP's matrices: BENCHMARKS.md)
WARM_TOL_FLOAT64 = 1e-10  # float64 weights
WARM_GUARD = 4          # vectors kept beyond the largest rank, so the cut lies inside the block
WARM_MAX_FRACTION = 0.5  # above this share of m the k x k solve saves too little: stay cold
WARM_BACKOFF_MAX = 32   # after failed certificates in a row, skip 1, 2, 4, ... up to this many calls
WARM_RULES: tuple[str, ...] = ("energy", "value")  # rules decidable from the top-k and the trace


def check_solver(solver: str, field: str = "solver") -> str:
    """Validate a projection solver name: one of :data:`SOLVERS`, or ``svd-<driver>`` (CUDA)."""
    accepted = list(SOLVERS) + [f"svd-{d}" for d in CUDA_SVD_DRIVERS]
    if solver not in accepted:
        raise bad(field, solver, f"{', '.join(accepted)} (svd-* on CUDA only)")
    return solver


# what a full solve returns: the projection, the sub-gradient (or None), the left singular
# vectors of the wide orientation (what a warm start keeps) and the rule's mask
Solved = tuple[Tensor, Optional[Tensor], Tensor, Tensor]


def _project_svd(batch: Tensor, rule: Rule, with_subgradient: bool, driver: Optional[str]) -> Solved:
    """Exact: one batched ``torch.linalg.svd``; the rank enters as a mask on ``s``."""
    with svd_threads(batch):
        u, s, vh = torch.linalg.svd(batch, full_matrices=False, driver=driver)
    keep = rank_mask(s, rule)                                # (B, k), stays on device
    keep_f = keep.to(s.dtype)
    proj = (u * (s * keep_f).unsqueeze(-2)) @ vh
    sub = (u * keep_f.unsqueeze(-2)) @ vh if with_subgradient else None
    return proj, sub, (vh.mT if batch.shape[-2] > batch.shape[-1] else u), keep


def _gram_is_small(rows: int, cols: int) -> bool:
    """Whether one side is at least :data:`AUTO_GRAM_ASPECT` times the other: the Gram matrix is
    then small and its full eigensolve cheap (``auto`` takes it; the warm start's second pass
    does not pay there)."""
    return max(rows, cols) >= AUTO_GRAM_ASPECT * min(rows, cols)


def _wide(batch: Tensor) -> tuple[Tensor, bool]:
    """``(X, tall)``: the batch, transposed where tall, so that X X^T is the smaller Gram matrix."""
    tall = batch.shape[-2] > batch.shape[-1]
    return (batch.mT if tall else batch), tall


def _gram(x: Tensor) -> Tensor:
    """X X^T in float64: squaring X squares its condition number."""
    x64 = x.to(torch.float64)
    return x64 @ x64.mT


def _inverse_s(s: Tensor, dims: Sequence[int]) -> Tensor:
    """``1/s`` for the singular values that the Gram matrix resolves, 0 for the rest: values
    below ``sqrt(eps64) * max(m, n) * s_max`` cannot be told from rounding in ``s^2``, and their
    ``1/s`` in the sub-gradient would only amplify that noise."""
    floor = s[..., :1] * (math.sqrt(torch.finfo(torch.float64).eps) * max(dims))
    return torch.where(s > floor, 1.0 / s.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def _project_from_eigs(x: Tensor, tall: bool, s: Tensor, q: Tensor, keep: Tensor, with_subgradient: bool
                       ) -> tuple[Tensor, Optional[Tensor]]:
    """Projection and sub-gradient of X from all eigenpairs of its Gram matrix (float64; ``s``
    the singular values, descending, ``q`` (B, m, m) the left singular vectors, ``keep`` the
    rule's mask on ``s``). ``V^T = diag(1/s) U^T X``, so the rank-r weight is ``U_r U_r^T X``
    and the sub-gradient ``U_r V_r^T = U_r diag(1/s_r) U_r^T X``: the two m x m operators are
    built in float64 and only the final ``[P; S] @ X`` (one batched product, most of the
    arithmetic) runs in X's dtype, which matches an exact SVD to X's rounding. The projection
    never divides, so it keeps values below the sub-gradient's floor (:func:`_inverse_s`)."""
    keep = keep.to(s.dtype)
    ops = [(q * keep.unsqueeze(-2)) @ q.mT]                  # P = U_r U_r^T, (B, m, m)
    if with_subgradient:
        ops.append((q * (keep * _inverse_s(s, x.shape[-2:])).unsqueeze(-2)) @ q.mT)  # U_r diag(1/s_r) U_r^T
    out = torch.cat(ops, dim=-2).to(x.dtype) @ x            # [P X; S X], (B, m or 2m, n)
    if tall:
        out = out.mT
    m = x.shape[-2]
    if not with_subgradient:
        return out, None
    return (out[..., :, :m], out[..., :, m:]) if tall else (out[..., :m, :], out[..., m:, :])


def _project_from_top(x: Tensor, tall: bool, s: Tensor, q: Tensor, keep: Tensor, with_subgradient: bool
                      ) -> tuple[Tensor, Optional[Tensor]]:
    """The same from the top k eigenpairs only (``q`` (B, m, k), k >= every kept rank):
    ``Y = U_k^T X`` once, then ``U_k diag(keep) Y`` and ``U_k diag(keep / s) Y``, 3mkn products
    in X's dtype instead of the m x m operators' 2m^2 n."""
    keep = keep.to(s.dtype)
    coefs = [keep] + ([keep * _inverse_s(s, x.shape[-2:])] if with_subgradient else [])
    y = q.mT.to(x.dtype) @ x                                 # (B, k, n)
    outs = [((q * c.unsqueeze(-2)).to(x.dtype) @ y) for c in coefs]
    outs = [o.mT for o in outs] if tall else outs
    return outs[0], (outs[1] if with_subgradient else None)


def _full_eigs(a: Tensor) -> tuple[Tensor, Tensor]:
    """All singular values (descending) and left singular vectors from the Gram matrix ``a``."""
    with svd_threads(a):
        lam, q = torch.linalg.eigh(a)                        # ascending eigenvalues
    return lam.flip(-1).clamp_min(0).sqrt(), q.flip(-1)


def _project_gram(batch: Tensor, rule: Rule, with_subgradient: bool) -> Solved:
    """The same projection from the eigendecomposition of the small Gram matrix: for ``X``
    (m x n, m <= n; a tall matrix is transposed first), ``X X^T = U diag(s^2) U^T`` gives ``U``
    and ``s`` (see :func:`_project_from_eigs`). An m x m symmetric eigensolver plus matrix
    products is far cheaper than a general SVD of X."""
    x, tall = _wide(batch)
    s, q = _full_eigs(_gram(x))
    keep = rank_mask(s, rule)
    return (*_project_from_eigs(x, tall, s, q, keep, with_subgradient), q, keep)


def _chebyshev(a: Tensor, q: Tensor, degree: int) -> tuple[Tensor, Tensor]:
    """``T_d(L) q``: the Chebyshev polynomial of degree ``d`` in ``L = (2A - b) / b``, which stays
    within [-1, 1] on the eigenvalues below ``b`` and grows like ``(x + sqrt(x^2 - 1))^d`` above
    it, far faster than ``A^d`` separates the top of the spectrum from the rest. ``q`` is the
    previous call's block, Ritz vectors in descending order, so ``|A q_k|`` estimates its last
    eigenvalue; ``b`` sits just above it (where the block's guard ends). A poor ``b`` only slows
    the filter: the certificate in :func:`warm_eigs` decides. ``d`` products with ``A``.
    Returns the filtered block and ``b`` (B, 1, 1)."""
    aq = a @ q
    b = (1.1 * aq[..., -1].norm(dim=-1)).clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]
    prev, cur = q, (2 * aq - b * q) / b
    for _ in range(degree - 1):
        prev, cur = cur, 2 * (2 * (a @ cur) - b * cur) / b - prev
    return cur, b


def _degree_gain(t_r: Tensor, b: Tensor, degree: int) -> Tensor:
    """How much the last degree of :func:`_chebyshev`'s filter shrank the angle at the cut
    ``t_r``: ``T_d(x) / T_{d-1}(x)`` at ``x = 2 t_r / b - 1`` (the components below ``b`` stay
    within 1), so a filter one degree lower leaves a bound about this many times larger."""
    grow = torch.acosh((2 * t_r / b.reshape(t_r.shape) - 1).clamp_min(1))
    return torch.cosh(degree * grow) / torch.cosh((degree - 1) * grow)


def _ritz(a: Tensor, block: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rayleigh-Ritz on span(``block``): Ritz values ``t`` (descending, >= 0), vectors ``q`` and ``A q``."""
    q = torch.linalg.qr(block).Q
    aq = a @ q
    with svd_threads(a):
        t, w = torch.linalg.eigh(q.mT @ aq)                  # q^T A q, k x k: small, batched
    return t.flip(-1).clamp_min(0), q @ w.flip(-1), aq @ w.flip(-1)


def _cut(t: Tensor, trace: Tensor, rule: Rule) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The rule's cut on the Ritz values ``t`` with the energy outside the block (``trace -
    sum(t)``) as one more value: ``(mask on t, kept rank r (B, 1), t_r, t_{r+1}, inside)``,
    ``inside`` where the cut falls inside the block (neither its last vector nor the outside is
    kept), so the mask on the top k is the mask on the full spectrum."""
    tail = (trace - t.sum(-1)).clamp_min(0)
    keep_k1 = rank_mask(torch.cat([t, tail[..., None]], -1).sqrt(), rule)
    keep = keep_k1[..., :-1]
    r = keep.sum(-1, keepdim=True)                           # (B, 1)
    t_r = t.gather(-1, (r - 1).clamp_min(0)).squeeze(-1)
    t_next = t.gather(-1, r.clamp_max(t.shape[-1] - 1)).squeeze(-1)
    return keep, r, t_r, t_next, ~keep_k1[..., -2] & ~keep_k1[..., -1]


def _angle(t: Tensor, q: Tensor, aq: Tensor, keep: Tensor, t_r: Tensor, mu: Tensor, tol: float) -> Tensor:
    """Davis-Kahan, where the spectrum past the r-th value is proven at or below ``mu``: the sine
    of the angle between the kept Ritz vectors and the exact top-r eigenvectors is at most
    ``|A Q_r - Q_r diag(t_r)|_F / (t_r - mu)``; returned as a share of ``tol`` (inf where
    ``t_r <= mu``), so at most 1 is certified."""
    residual = ((aq - q * t.unsqueeze(-2)) * keep.unsqueeze(-2)).norm(dim=(-2, -1))
    return torch.where(t_r > mu, residual / (tol * (t_r - mu)).clamp_min(torch.finfo(t.dtype).tiny), math.inf)


class Warm(NamedTuple):
    """What :func:`warm_eigs` certified: singular values ``s``, left singular vectors ``q`` and
    the rule's mask ``keep`` of the top k, the largest kept rank, the filter passes it took, the
    angle bound's largest share of the tolerance, and the share predicted for a filter one degree
    lower (:func:`_degree_gain`; inf after two passes)."""

    s: Tensor
    q: Tensor
    keep: Tensor
    r_max: int
    passes: int
    slack: float
    slack_lower: float


def warm_eigs(x64: Tensor, q: Tensor, rule: Rule, tol: float = WARM_TOL, refine: bool = True,
              degree: int = WARM_ITERS) -> Optional[Warm]:
    """Top-k eigenpairs of the Gram matrices ``A = X X^T`` of ``x64`` (B, m, n; float64) from a
    start ``q`` (B, m, k) (see :class:`Warm`); None where any matrix fails the certificate (one
    host read-back, two where the refinement below runs).

    A Chebyshev filter (:func:`_chebyshev`, ``degree`` products with A), then
    Rayleigh-Ritz: Ritz values ``t`` (descending) and vectors ``q``. The energy outside the block
    is ``tail = trace(A) - sum(t)``; with it as one extra value the rule's mask on the top k is
    the mask on the full spectrum when the cut falls inside the block (checked: the block's last
    vector and the tail are not kept). The certificate, for the kept rank r:

    - split: ``mu = (t_r + t_{r+1}) / 2``; with ``W = Q_r diag(t_r) Q_r^T`` (rank r), Weyl's
      inequality gives ``lambda_{r+1}(A) <= lambda_max(A - W)``, so a Cholesky factorization of
      ``mu I - A + W`` that succeeds proves ``lambda_{r+1}(A) <= mu`` (``mu`` lowered first by a
      bound on the rounding in forming ``A`` and in the factorization: ``m max(m, n) eps`` of
      ``mu + t_1 + trace(A)``);
    - angle: the Ritz values ``t_1..t_r`` lie at or above ``t_r > mu``, so by Davis-Kahan the sine
      of the angle between span(Q_r) and the exact top-r eigenvectors is at most
      ``|A Q_r - Q_r diag(t_r)|_F / (t_r - mu)``, accepted when at most ``tol``.

    The split is a fact about ``A`` alone, whatever block proved it. So where it holds everywhere
    and only the angle is short of ``tol`` (the step moved the subspace more than one filter
    undoes), the block is filtered once more (where ``refine``) and the angle bounded again
    against the same ``mu``, provided the cut keeps the same rank: a few products instead of the
    full solve."""
    a = _gram(x64)                                           # (B, m, m), m <= n
    block, b = _chebyshev(a, q, degree)
    t, q, aq = _ritz(a, block)
    trace = a.diagonal(dim1=-2, dim2=-1).sum(-1)
    keep, r, t_r, t_next, inside = _cut(t, trace, rule)
    m = a.shape[-1]
    mu = (t_r + t_next) / 2
    kept_t = t * keep.to(t.dtype)
    cert = (q * kept_t.unsqueeze(-2)) @ q.mT - a             # W - A
    # rounding in A (n terms per entry) and in the factorization (m), both within eps * size * trace
    rounding = m * max(m, x64.shape[-1]) * torch.finfo(a.dtype).eps * (mu + kept_t[..., 0] + trace)
    cert.diagonal(dim1=-2, dim2=-1).add_((mu - rounding).unsqueeze(-1))
    split = (r.squeeze(-1) > 0) & inside & (torch.linalg.cholesky_ex(cert).info == 0)
    angle = torch.where(split, _angle(t, q, aq, keep, t_r, mu, tol), math.inf)
    lower = (angle * _degree_gain(t_r, b, degree)).max()
    r_max, slack, slack_lower = torch.stack([torch.where(split.all(), r.max(), -1).to(angle.dtype), angle.max(),
                                             lower]).tolist()                         # the host sync
    passes = 1
    if r_max > 0 and slack > 1 and refine:                  # split proven, angle short: filter again
        t, q, aq = _ritz(a, _chebyshev(a, q, WARM_ITERS)[0])
        keep, r2, t_r, _, inside = _cut(t, trace, rule)
        same = (r2 == r).squeeze(-1) & inside
        slack = float(torch.where(same, _angle(t, q, aq, keep, t_r, mu, tol), math.inf).max())
        passes, slack_lower = 2, math.inf
    return Warm(t.sqrt(), q, keep, int(r_max), passes, slack, slack_lower) if r_max > 0 and slack <= 1 else None


@dataclass
class WarmStart:
    """What the warm start keeps between calls on the same weights: the top eigenvectors of
    each shape group's Gram matrices, the back-off after failed certificates (calls still to
    skip, failures in a row), each group's filter degree, and how many group projections took
    the warm path or ran the full solve (so a report can say how often the fast path held)."""

    starts: dict[tuple, Tensor] = field(default_factory=dict)
    skip: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    degree: dict[tuple, int] = field(default_factory=dict)
    warm: int = 0
    cold: int = 0

    def state_dict(self) -> dict[str, Any]:
        """Plain lists, ints and tensors (loadable with ``torch.load(weights_only=True)``)."""
        return {"starts": [[list(k), q] for k, q in self.starts.items()],
                "skip": [[list(k), list(v)] for k, v in self.skip.items()],
                "degree": [[list(k), d] for k, d in self.degree.items()], "warm": self.warm, "cold": self.cold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (in place: a method's reference stays valid)."""
        self.starts = {tuple(k): q for k, q in state.get("starts", [])}
        self.skip = {tuple(k): (int(v[0]), int(v[1])) for k, v in state.get("skip", [])}
        self.degree = {tuple(k): int(d) for k, d in state.get("degree", [])}
        self.warm, self.cold = int(state.get("warm", 0)), int(state.get("cold", 0))

    def adapt(self, key: tuple, found: Optional[Warm]) -> None:
        """The filter degree of the next call on ``key``, within :data:`WARM_DEGREES`: one more
        after a call that failed or needed a second pass (the steps between calls outgrew the
        filter), one less where that is predicted to certify within :data:`WARM_SLACK` of the
        tolerance (the steps shrank)."""
        d = self.degree.get(key, WARM_ITERS)
        if found is None or found.passes > 1:
            d = min(d + 1, WARM_DEGREES[1])
        elif found.slack_lower <= WARM_SLACK:
            d = max(d - 1, WARM_DEGREES[0])
        self.degree[key] = d

    def may_try(self, key: tuple) -> bool:
        """Whether to attempt the warm path now (counts down a back-off)."""
        wait, fails = self.skip.get(key, (0, 0))
        if wait > 0:
            self.skip[key] = (wait - 1, fails)
            return False
        return True

    def failed(self, key: tuple) -> None:
        """A failed certificate: skip the next 1, 2, 4, ... (at most WARM_BACKOFF_MAX) calls."""
        fails = self.skip.get(key, (0, 0))[1] + 1
        self.skip[key] = (min(2 ** (fails - 1), WARM_BACKOFF_MAX), fails)


def _full_solve(batch: Tensor, rule: Rule, with_subgradient: bool, exact_svd: bool) -> Solved:
    """The full solve behind a warm start: the SVD where ``exact_svd``, else the Gram eigensolve."""
    if exact_svd:
        return _project_svd(batch, rule, with_subgradient, None)
    return _project_gram(batch, rule, with_subgradient)


def _project_warm(batch: Tensor, rule: Rule, with_subgradient: bool, state: Optional[WarmStart], key: tuple,
                  exact_svd: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """The projection started from the factors ``state.starts[key]`` that the previous call on
    the same group left (see :func:`warm_eigs`); a cold start, a rule the top-k cannot decide,
    a back-off or a failed certificate runs the full solve instead (the SVD where
    ``exact_svd``, else the Gram eigensolve), which leaves the next start. ``state`` None keeps
    nothing: every call is the full solve."""
    if state is None:
        return _full_solve(batch, rule, with_subgradient, exact_svd)[:2]
    x, tall = _wide(batch)
    m = x.shape[-2]
    q0 = state.starts.get(key)
    if rule.kind in WARM_RULES and q0 is not None and q0.shape[:-1] == (*x.shape[:-2], m) and state.may_try(key):
        tol = WARM_TOL_FLOAT64 if batch.dtype == torch.float64 else WARM_TOL
        # a second filter pass pays where the full solve is of a square-ish matrix (an m x m
        # SVD or eigensolve, several passes' cost); on a wide one the Gram eigensolve is cheap
        found = warm_eigs(x.to(torch.float64), q0, rule, tol, refine=not _gram_is_small(m, x.shape[-1]),
                          degree=state.degree.get(key, WARM_ITERS))
        state.adapt(key, found)
        if found is not None:
            s, q, keep, r_max = found.s, found.q, found.keep, found.r_max
            state.warm += 1
            state.skip.pop(key, None)
            state.starts[key] = q[..., : min(q.shape[-1], r_max + WARM_GUARD)]
            top = slice(0, r_max)                            # nothing past the largest rank is kept
            return _project_from_top(x, tall, s[..., top], q[..., top], keep[..., top], with_subgradient)
        state.failed(key)
    proj, sub, left, keep = _full_solve(batch, rule, with_subgradient, exact_svd)
    state.cold += 1
    k = int(keep.sum(-1).max()) + WARM_GUARD if rule.kind in WARM_RULES else m  # host sync, like eigh's
    if k <= WARM_MAX_FRACTION * m:
        state.starts[key] = left[..., :k].to(torch.float64)
    else:
        state.starts.pop(key, None)
    return proj, sub


def project(weights: Sequence[Tensor], scheme: str, rule: Union[str, Rule], with_subgradient: bool = True,
            tiles: Union[int, Sequence[int]] = 1, solver: str = "svd", state: Optional[WarmStart] = None
            ) -> tuple[list[Tensor], list[Optional[Tensor]]]:
    """Project each weight onto its low-rank set under ``rule``, batched, without host sync but
    for the warm start's read-back per shape group (two where it filters twice).

    All matrices of one shape (and dtype/device), whatever layer, filter or tile they come
    from, are stacked and go through one batched solve; the rank is applied as a mask
    (:func:`rank_mask`), never read back to the host, so a training step keeps the GPU queue
    full. Returns the projected weights ``U_r diag(s_r) V_r^T`` and, if asked, the nuclear-norm
    sub-gradients ``U_r V_r^T``, both in each weight's own shape and order. (PyTorch documents
    that torch.linalg.svd and eigh synchronize a CUDA device with the CPU, to check for
    convergence errors; grouping keeps that to one per distinct matrix shape, and nothing else
    here syncs but the warm start's read-back.)

    ``tiles`` (one int, or one per weight; see :func:`layer_tiles`): project each column tile
    separately (DeepTwist's tiling); tiles of every layer batch together by shape.

    ``solver``: ``"svd"`` (exact, the default), ``"svd-<driver>"`` (exact, a cuSOLVER driver on
    CUDA), ``"gram"`` (eigendecomposition of the small Gram matrix in float64; same ranks and
    agreement to the weights' rounding, faster on wide matrices: see :func:`_project_gram`),
    ``"warm"`` (started from the factors the previous call left in ``state``, a
    :class:`WarmStart` the caller keeps between calls on the same weights: a few products and a
    small eigensolve, certified within :data:`WARM_TOL` of the exact subspace, else the full Gram
    eigensolve; see :func:`warm_eigs`; it reads back its verdict per shape group) or ``"auto"``
    (on the CPU, the warm start where ``state`` is given, with the same read-back; then, and
    on a GPU always, gram for groups whose matrices are at least :data:`AUTO_GRAM_ASPECT` times
    wider than tall or the reverse and the SVD for the others)."""
    rule = parse_rule(rule)
    check_solver(solver)
    tl = [tiles] * len(weights) if isinstance(tiles, int) else list(tiles)
    groups: dict[tuple, list[int]] = {}
    mats = [to_matrix(w.detach(), scheme, t) for w, t in zip(weights, tl)]
    for i, m in enumerate(mats):  # key: one matrix's shape, so tiles/filters of any layer batch together
        groups.setdefault((m.shape[-2], m.shape[-1], m.dtype, m.device), []).append(i)
    projected: list[Optional[Tensor]] = [None] * len(weights)
    subgrads: list[Optional[Tensor]] = [None] * len(weights)
    for (rows, cols, _, _), idx in groups.items():
        flats = [mats[i].reshape(-1, rows, cols) for i in idx]
        batch = torch.cat(flats) if len(flats) > 1 else flats[0]  # (B, rows, cols)
        wide = _gram_is_small(rows, cols)
        # auto starts warm on the CPU, where it is measured faster (BENCHMARKS.md); on a GPU it
        # stays sync-free until the GPU suite has measured the warm path there
        if solver == "warm" or (solver == "auto" and state is not None and batch.device.type == "cpu"):
            key = (rows, cols, batch.shape[0], str(batch.dtype), str(batch.device))
            proj_b, sub_b = _project_warm(batch, rule, with_subgradient, state, key,
                                          exact_svd=solver == "auto" and not wide)
        elif solver == "gram" or (solver == "auto" and wide):
            proj_b, sub_b = _project_gram(batch, rule, with_subgradient)[:2]
        else:  # svd, auto on a square-ish group, or svd-<driver>
            driver = solver.partition("-")[2] or None
            if driver and batch.device.type != "cuda":
                raise bad("solver", solver, f"on {batch.device}: {', '.join(SOLVERS)}", "needs CUDA")
            proj_b, sub_b = _project_svd(batch, rule, with_subgradient, driver)[:2]
        sizes = [f.shape[0] for f in flats]
        proj = proj_b.split(sizes)
        sub = sub_b.split(sizes) if sub_b is not None else None
        for j, i in enumerate(idx):
            wshape, mshape = weights[i].shape, mats[i].shape
            projected[i] = from_matrix(proj[j].reshape(mshape), scheme, wshape, tl[i])
            if sub is not None:
                subgrads[i] = from_matrix(sub[j].reshape(mshape), scheme, wshape, tl[i])
    return projected, subgrads  # type: ignore[return-value]

