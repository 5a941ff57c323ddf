"""rankbench.methods.lowrank.solvers: the batched projection against a per-layer SVD reference, for every
solver; the warm solver's check and fallback; no host sync."""
from __future__ import annotations

import warnings

import pytest
import torch

from rankbench.bench.models.builtin import build_model
from lowrank_refs import ref_energy_rank, ref_matrix, ref_reconstruct, ref_tiled_reconstruct
from rankbench.methods import lowrank as L
from rankbench.methods.lowrank import solvers

def _layer_weights() -> list[torch.Tensor]:
    torch.manual_seed(3)
    shapes = [(8, 4, 3, 3), (8, 4, 3, 3), (16, 8, 3, 3), (8, 4, 3, 3), (6, 5, 1, 3)]
    # decaying spectra so the energy rule picks different ranks per layer
    ws = []
    for i, sh in enumerate(shapes):
        w = torch.randn(sh, dtype=torch.float64)
        ws.append(w * (1 + i) if i % 2 else w)
    return ws


# the Gram solver squares the matrix before its (float64) eigensolve: 1e-9 instead of 1e-10
SOLVER_ATOL = {"svd": 1e-10, "gram": 1e-9, "auto": 1e-9, "warm": 1e-9}


@pytest.mark.parametrize("solver", L.SOLVERS)
@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupling"])
def test_project_matches_per_layer_svd_reference(scheme, solver):
    weights = _layer_weights()
    if scheme != "channel":
        weights = [w for w in weights if w.shape[-1] * w.shape[-2] > 1]
    rule = "energy:0.6"
    atol = SOLVER_ATOL[solver]
    projected, subgrads = L.project(weights, scheme, rule, with_subgradient=True, solver=solver)
    for w, p, g in zip(weights, projected, subgrads):
        m = ref_matrix(w, scheme)
        ms = m if m.dim() == 3 else m.unsqueeze(0)
        ref_p, ref_g = [], []
        for one in ms:  # per filter for decoupling, else one matrix
            u, s, vh = torch.linalg.svd(one, full_matrices=False)
            r = ref_energy_rank(s, 0.6)
            ref_p.append(u[:, :r] @ torch.diag(s[:r]) @ vh[:r])
            ref_g.append(u[:, :r] @ vh[:r])
        rp, rg = torch.stack(ref_p).reshape(m.shape), torch.stack(ref_g).reshape(m.shape)
        assert p.shape == w.shape and g.shape == w.shape
        assert torch.allclose(ref_matrix(p, scheme), rp, atol=atol)
        assert torch.allclose(ref_matrix(g, scheme), rg, atol=atol)


@pytest.mark.parametrize("solver", L.SOLVERS)
def test_project_tiles_match_per_tile_reference(solver):
    weights = [w for w in _layer_weights() if w.shape[1] % 2 == 0]
    projected, subgrads = L.project(weights, "channel", "rank:2", tiles=2, solver=solver)
    for w, p in zip(weights, projected):
        assert torch.allclose(p, ref_tiled_reconstruct(w, 2, 2), atol=SOLVER_ATOL[solver])
    # per-weight tile counts; the untiled weight is projected whole
    mixed, _ = L.project(weights[:2], "channel", "rank:2", False, tiles=[2, 1])
    assert torch.allclose(mixed[0], ref_tiled_reconstruct(weights[0], 2, 2), atol=1e-10)
    assert torch.allclose(mixed[1], ref_reconstruct(weights[1], "channel", 2), atol=1e-10)


@pytest.mark.parametrize("solver,routine", [("svd", "svd"), ("gram", "eigh"), ("warm", "eigh")])
def test_project_one_svd_per_shape_group_and_no_host_sync(monkeypatch, solver, routine):
    weights = _layer_weights()  # 3 distinct matrix shapes among 5 layers
    calls = []
    real = getattr(torch.linalg, routine)

    def counting(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    def no_sync(*a, **k):
        raise AssertionError("host sync in project()")

    monkeypatch.setattr(torch.linalg, routine, counting)
    for attr in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, attr, no_sync)
    projected, subgrads = L.project(weights, "channel", "energy:0.9", with_subgradient=True, solver=solver)
    monkeypatch.undo()
    assert len(calls) == 3
    assert sorted(c[0] for c in calls) == [1, 1, 3]  # the three (8, 36) layers share one batched call
    assert all(p is not None and g is not None for p, g in zip(projected, subgrads))
    _, none = L.project(weights, "channel", "rank:1", with_subgradient=False)
    assert none == [None] * len(weights)


@pytest.mark.parametrize("solver", ["gram", "auto", "warm"])
def test_fast_solvers_on_float32_weights_keep_exact_ranks_and_float32_accuracy(solver):
    # ResNet-20's TRP layers as float32, tall (spatial) and wide (channel) matrices alike
    from rankbench.bench.models.builtin import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32))
    for scheme in ("channel", "spatial"):
        names = [n for n, why in L.layer_choice(model, scheme) if why is None]
        weights = [model.get_submodule(n).weight.detach() for n in names]
        ref_p, ref_g = L.project([w.double() for w in weights], scheme, "energy:0.9", solver="svd")
        got_p, got_g = L.project(weights, scheme, "energy:0.9", solver=solver)
        for w, rp, rg, p, g in zip(weights, ref_p, ref_g, got_p, got_g):
            assert p.dtype == w.dtype == g.dtype
            assert float((p.double() - rp).norm() / rp.norm()) < 1e-5
            assert float((g.double() - rg).norm() / rg.norm()) < 1e-5
            # same rank: the sub-gradient U_r V_r^T has r singular values equal to one
            assert torch.linalg.matrix_rank(L.to_matrix(g.double(), scheme), atol=0.5) == \
                torch.linalg.matrix_rank(L.to_matrix(rg, scheme), atol=0.5)


def _trp_steady(dtype: torch.dtype, seed: int = 0, scheme: str = "channel") -> list[torch.Tensor]:
    """Weights as period-1 TRP leaves them: in the scheme's matrix form, a few large singular
    values over a small tail."""
    g = torch.Generator().manual_seed(seed)
    ws = []
    for out, inp, rank in [(16, 16, 3), (16, 16, 4), (32, 16, 5), (64, 32, 6), (64, 32, 4)]:
        rows, cols = L.to_matrix(torch.empty(out, inp, 3, 3), scheme).shape
        u, v = torch.randn(rows, rank, generator=g), torch.randn(rank, cols, generator=g)
        m = (u * torch.linspace(3, 1, rank)) @ v + 1e-3 * torch.randn(rows, cols, generator=g)
        ws.append(L.from_matrix(m, scheme, (out, inp, 3, 3)).to(dtype))
    return ws


def _nudge(ws: list[torch.Tensor], size: float, seed: int) -> list[torch.Tensor]:
    """A training step's worth of change: ``size`` times each weight's RMS, per element."""
    g = torch.Generator().manual_seed(seed)
    return [w + size * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g, dtype=w.dtype) for w in ws]


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_warm_solver_starts_from_the_last_step_and_stays_exact(scheme):
    state = L.WarmStart()
    weights = _trp_steady(torch.float64, scheme=scheme)
    L.project(weights, scheme, "energy:0.9", solver="warm", state=state)
    assert state.cold == 3 and state.warm == 0               # 3 shape groups, nothing to start from
    for step in range(3):
        weights = _nudge(weights, 1e-3, step)
        p, g = L.project(weights, scheme, "energy:0.9", solver="warm", state=state)
        rp, rg = L.project(weights, scheme, "energy:0.9", solver="svd")
        # a stale subspace would be off by about the step (1e-3); the check bounds the angle by 1e-7
        for a, b in zip(p + g, rp + rg):
            assert float((a - b).norm() / b.norm()) < 1e-9
    assert state.warm == 9 and state.cold == 3


def test_warm_check_rejects_a_start_that_misses_the_top_subspace():
    # a start spanning only the bottom eigenvectors of a diagonal Gram matrix stays there under
    # subspace iteration (exactly: zeros stay zero), so its Ritz values look like a clean small
    # spectrum; the energy left outside the block (trace - Ritz values) is what must expose it
    lam = torch.linspace(10, 1, 16, dtype=torch.float64)
    x = torch.diag(lam.sqrt()).unsqueeze(0)                  # X X^T = diag(lam)
    bottom = torch.eye(16, dtype=torch.float64)[:, -6:].unsqueeze(0)
    assert L.warm_eigs(x, bottom, L.Rule("energy", 0.9)) is None
    top = torch.eye(16, dtype=torch.float64)[:, :6].unsqueeze(0)
    gapped = torch.diag(torch.cat([lam[:3] * 100, lam[3:] * 1e-6]).sqrt()).unsqueeze(0)
    assert L.warm_eigs(gapped, top, L.Rule("energy", 0.9)) is not None


def _steady_matrix(m: int, rank: int, seed: int) -> torch.Tensor:
    """An m x m float64 matrix whose energy-0.9 rank is ``rank``: a head decaying by e over a
    random-matrix tail holding the rest (the shape TRP's layers have at the paper's ranks)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.exp(-torch.arange(rank, dtype=torch.float64) / (rank - 1)).square()
    tail = torch.linalg.svdvals(torch.randn(m - rank, m - rank, generator=g, dtype=torch.float64)).square()
    head = head / head.sum()
    head_e = 0.9 / (1 - float(head[-1]) / 2)    # the first rank - 1 values hold < 0.9, all rank > 0.9
    s2 = torch.cat([head * head_e, tail / tail.sum() * (1 - head_e)])
    u = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
    return (u * s2.sqrt()) @ v.T


def test_warm_certifies_ranks_of_sixty_and_more():
    # at the energy-0.9 cut the energy outside any block is at least ~10%, so a bound from the
    # trace can never separate rank >= 60; the Cholesky certificate needs only the gap at the cut
    x = torch.stack([_steady_matrix(384, 64, seed) for seed in (0, 1)])
    rule = L.Rule("energy", 0.9)
    exact = [L.rank_from_rule(torch.linalg.svdvals(one), rule) for one in x]
    assert min(exact) >= 60
    lam, u = torch.linalg.eigh(x @ x.mT)
    start = u.flip(-1)[..., : max(exact) + L.WARM_GUARD]
    step = x + 1e-3 * x.pow(2).mean().sqrt() * torch.randn(x.shape, generator=torch.Generator().manual_seed(5),
                                                             dtype=x.dtype)
    found = L.warm_eigs(step, start, rule, L.WARM_TOL)   # float32's tolerance: four products from a 1e-3 step
    assert found is not None
    s, q, keep = found.s, found.q, found.keep
    assert keep.sum(-1).tolist() == [L.rank_from_rule(torch.linalg.svdvals(one), rule) for one in step]
    us, ss, _ = torch.linalg.svd(step)
    for b in range(2):
        r = int(keep[b].sum())
        p_warm, p_exact = q[b, :, :r] @ q[b, :, :r].T, us[b, :, :r] @ us[b, :, :r].T
        # |P - P_exact|_F = sqrt(2) |sin(angle)|_F, certified at most WARM_TOL
        assert float((p_warm - p_exact).norm()) < 1.5 * L.WARM_TOL
        assert torch.allclose(s[b, :r], ss[b, :r], rtol=1e-8)   # Ritz values: the angle squared


def test_warm_filters_again_where_only_the_angle_falls_short(monkeypatch):
    # a step ten times the usual: one filter leaves the angle above WARM_TOL, but the split at
    # the cut is proven (it is about A alone), so one more filter pass, not the full solve
    x = torch.stack([_steady_matrix(96, 20, seed) for seed in (0, 1)])
    rule = L.Rule("energy", 0.9)
    _, u = torch.linalg.eigh(x @ x.mT)
    start = u.flip(-1)[..., : 20 + L.WARM_GUARD]
    step = x + 1e-2 * x.pow(2).mean().sqrt() * torch.randn(x.shape, generator=torch.Generator().manual_seed(5),
                                                             dtype=x.dtype)
    passes = []
    real = solvers._ritz
    monkeypatch.setattr(solvers, "_ritz", lambda a, block: passes.append(1) or real(a, block))
    found = L.warm_eigs(step, start, rule, L.WARM_TOL)
    assert found is not None and len(passes) == 2 and found.passes == 2 and found.slack <= 1
    s, q, keep = found.s, found.q, found.keep
    us, ss, _ = torch.linalg.svd(step)
    for b in range(2):
        r = int(keep[b].sum())
        assert r == L.rank_from_rule(ss[b], rule)
        p_warm, p_exact = q[b, :, :r] @ q[b, :, :r].T, us[b, :, :r] @ us[b, :, :r].T
        assert float((p_warm - p_exact).norm()) < 1.5 * L.WARM_TOL


def test_warm_filter_degree_follows_the_step_size_and_is_checkpointed():
    # big steps: the group that needed a second pass filters with a higher degree next call and
    # then certifies in one pass; small steps: the degree comes down while the bound has room
    x = torch.stack([_steady_matrix(96, 20, seed) for seed in (0, 1)])
    rule = L.Rule("energy", 0.9)
    g = torch.Generator().manual_seed(5)
    # two 96 x 96 channel layers (one group), float32: the tolerance is WARM_TOL
    weights = [x.float().reshape(2, 96, 96, 1, 1)[i] for i in range(2)]

    def step(ws, size):
        return [w + size * w.pow(2).mean().sqrt() * torch.randn(w.shape, generator=g, dtype=w.dtype) for w in ws]

    state = L.WarmStart()
    L.project(weights, "channel", rule, solver="warm", state=state)      # cold: leaves the start
    (key,) = state.starts
    degrees = []
    for _ in range(4):
        weights = step(weights, 1e-2)
        L.project(weights, "channel", rule, solver="warm", state=state)
        degrees.append(state.degree[key])
    assert degrees[0] == L.WARM_ITERS + 1 and degrees[-1] > L.WARM_ITERS and state.cold == 1
    for _ in range(8):
        weights = step(weights, 1e-5)
        p, gr = L.project(weights, "channel", rule, solver="warm", state=state)
    assert state.degree[key] == L.WARM_DEGREES[0] and state.cold == 1
    rp, rg = L.project([w.double() for w in weights], "channel", rule, solver="svd")
    for a, b in zip(p + gr, rp + rg):
        assert float((a.double() - b).norm() / b.norm()) < 1e-5
    again = L.WarmStart()
    again.load_state_dict(state.state_dict())
    assert again.degree == state.degree


@pytest.mark.parametrize("m, rank", [(48, 8), (96, 20), (192, 34)])
def test_warm_predicts_the_bound_a_lower_filter_degree_leaves(m, rank):
    # the degree comes down only where the prediction says the lower one certifies with room:
    # it must match what that degree really leaves (measured: within 10-30%)
    x = torch.stack([_steady_matrix(m, rank, seed) for seed in (0, 1)])
    rule = L.Rule("energy", 0.9)
    _, u = torch.linalg.eigh(x @ x.mT)
    start = u.flip(-1)[..., : rank + L.WARM_GUARD]
    step = x + 1e-4 * x.pow(2).mean().sqrt() * torch.randn(x.shape, generator=torch.Generator().manual_seed(5),
                                                             dtype=x.dtype)
    found = {d: L.warm_eigs(step, start, rule, L.WARM_TOL, refine=False, degree=d) for d in (2, 3, 4)}
    assert all(f is not None and f.passes == 1 for f in found.values())
    for d in (3, 4):
        assert 0.5 < found[d - 1].slack / found[d].slack_lower < 2, (d, found[d - 1].slack, found[d].slack_lower)


def test_warm_certificate_rejects_a_block_missing_one_top_direction():
    # three large eigenvalues; the start holds two of them and the whole rest: subspace
    # iteration cannot bring the third in (its component is exactly zero), and the Ritz values
    # still look like a clean spectrum. The Cholesky factorization of mu I - A + W fails.
    lam = torch.cat([torch.tensor([100.0, 90.0, 80.0]), torch.linspace(1, 0.5, 13)]).double()
    x = torch.diag(lam.sqrt()).unsqueeze(0)
    start = torch.eye(16, dtype=torch.float64)[:, [0, 1, 3, 4, 5, 6]].unsqueeze(0)
    assert L.warm_eigs(x, start, L.Rule("energy", 0.9)) is None
    full = torch.eye(16, dtype=torch.float64)[:, :6].unsqueeze(0)
    assert L.warm_eigs(x, full, L.Rule("energy", 0.9)) is not None


def test_warm_backs_off_after_a_failed_certificate_and_tries_again():
    # a diagonal layer (exact zeros stay zero under subspace iteration): rank 3 at energy 0.9
    lam = torch.cat([torch.tensor([100.0, 90.0, 80.0]), torch.linspace(1, 0.5, 13)]).double()
    weights = [torch.diag(lam.sqrt()).reshape(16, 16, 1, 1)]
    state = L.WarmStart()
    L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
    (key,) = state.starts
    assert state.starts[key].shape[-1] == 3 + L.WARM_GUARD
    state.starts[key] = torch.eye(16, dtype=torch.float64)[:, [0, 1, 3, 4, 5, 6, 7]].unsqueeze(0)  # misses e_2
    state.warm = state.cold = 0
    L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
    assert (state.warm, state.cold) == (0, 1) and state.skip == {key: (1, 1)}   # failed: skip the next call
    L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
    assert (state.warm, state.cold) == (0, 2) and state.skip == {key: (0, 1)}   # skipped, solved in full
    p, g = L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
    assert (state.warm, state.cold) == (1, 2) and not state.skip   # the full solve left a good start
    rp, rg = L.project(weights, "channel", "energy:0.9", solver="svd")
    for a, b in zip(p + g, rp + rg):
        assert float((a - b).norm() / b.norm()) < 1e-9
    # the back-off grows with failures in a row, up to WARM_BACKOFF_MAX calls, and is checkpointed
    for _ in range(10):
        state.failed(key)
    assert state.skip[key] == (L.WARM_BACKOFF_MAX, 10)
    again = L.WarmStart()
    again.load_state_dict(state.state_dict())
    assert again.skip == state.skip and again.starts.keys() == state.starts.keys()


def test_auto_with_a_state_starts_warm_and_falls_back_to_the_svd_on_square_groups(monkeypatch):
    weights = _trp_steady(torch.float64, scheme="spatial")   # one square group (48 x 48), two 2x wide
    state = L.WarmStart()
    calls = []
    real = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    L.project(weights, "spatial", "energy:0.9", solver="auto", state=state)
    assert state.cold == 3 and len(calls) == 1               # first call: the SVD on the square group
    nudged = _nudge(weights, 1e-3, 0)
    p, g = L.project(nudged, "spatial", "energy:0.9", solver="auto", state=state)
    assert state.warm == 3 and len(calls) == 1               # then the warm path everywhere
    monkeypatch.undo()
    rp, rg = L.project(nudged, "spatial", "energy:0.9", solver="svd")
    for a, b in zip(p + g, rp + rg):
        assert float((a - b).norm() / b.norm()) < 1e-9


def test_warm_solver_falls_back_when_the_weights_jump_and_the_rank_outgrows_the_block():
    state = L.WarmStart()
    L.project(_trp_steady(torch.float64), "channel", "energy:0.9", solver="warm", state=state)
    assert len(state.starts) == 3                             # a start kept for each group
    jumped = [w + 10 * torch.randn_like(w) for w in _trp_steady(torch.float64)]  # noise-dominated spectrum
    p, g = L.project(jumped, "channel", "energy:0.9", solver="warm", state=state)
    rp, rg = L.project(jumped, "channel", "energy:0.9", solver="svd")
    assert state.warm == 0 and state.cold == 6
    assert not state.starts                  # ranks above half of m: no warm start kept
    for a, b in zip(p + g, rp + rg):
        assert float((a - b).norm() / b.norm()) < 1e-9


def test_warm_solver_keeps_float32_ranks_on_trp_steady_weights():
    state = L.WarmStart()
    weights = _trp_steady(torch.float32)
    L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
    weights = _nudge(weights, 1e-3, 0)
    p, g = L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
    rp, rg = L.project([w.double() for w in weights], "channel", "energy:0.9", solver="svd")
    assert state.warm == 3
    for a, b in zip(p + g, rp + rg):
        assert a.dtype == torch.float32 and float((a.double() - b).norm() / b.norm()) < 1e-5
    for a, b in zip(g, rg):
        assert torch.linalg.matrix_rank(L.to_matrix(a.double(), "channel"), atol=0.5) == \
            torch.linalg.matrix_rank(L.to_matrix(b, "channel"), atol=0.5)


def test_gram_solver_on_a_rank_deficient_matrix_gives_a_finite_subgradient():
    torch.manual_seed(0)
    w = (torch.randn(8, 2, dtype=torch.float64) @ torch.randn(2, 36, dtype=torch.float64)).reshape(8, 4, 3, 3)
    (p,), (g,) = L.project([w], "channel", "ratio:1.0", solver="gram")
    (rp,), (rg,) = L.project([w], "channel", "rank:2", solver="svd")
    assert torch.allclose(p, w, atol=1e-9)
    # only the two real directions count; the zero singular values contribute nothing, not 1/eps
    assert torch.isfinite(g).all() and torch.allclose(g, rg, atol=1e-6)


def test_unknown_solver_is_one_line_naming_what_is_accepted():
    with pytest.raises(ValueError, match=r"^solver: 'qr'; accepted: svd, gram"):
        L.project(_layer_weights(), "channel", "rank:1", solver="qr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA sync check needs a GPU; CPU test above checks by construction")
@pytest.mark.parametrize("solver", L.SOLVERS)
def test_project_does_not_sync_on_cuda(solver):
    weights = [w.float().cuda() for w in _layer_weights()]
    n_groups = 3
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            # auto given a state stays sync-free on a GPU (it starts warm on the CPU only)
            L.project(weights, "channel", "energy:0.9", with_subgradient=True, solver=solver,
                      state=L.WarmStart() if solver == "auto" else None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # torch.linalg.svd / eigh sync once per call (documented by PyTorch; set_sync_debug_mode("error")
    # would raise inside them), so the check is: at most one sync per shape group, none from our own code
    assert len(syncs) <= n_groups


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA sync check needs a GPU")
def test_warm_solver_reads_back_a_few_flags_per_group_on_cuda():
    state = L.WarmStart()
    L.project([w.float().cuda() for w in _trp_steady(torch.float64)], "channel", "energy:0.9", solver="warm",
              state=state)
    weights = [w.float().cuda() for w in _nudge(_trp_steady(torch.float64), 1e-3, 0)]
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            L.project(weights, "channel", "energy:0.9", solver="warm", state=state)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert state.warm == 3
    # per group: the k x k eigh's own check, one read-back (accepted? largest rank), and at most
    # one per thin QR if cuSOLVER's is checked; never one per layer or per matrix
    assert len(syncs) <= 3 * (2 + L.WARM_ITERS)
