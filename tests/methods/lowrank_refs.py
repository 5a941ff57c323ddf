"""Independent references for the rankbench.methods.lowrank tests: matrix views, truncated SVDs and
rank counts written out by hand from the scheme definitions (rankbench.methods.lowrank.schemes' docstring),
not from the code under test; plus the conv cases every factorization test runs over."""
from __future__ import annotations

import torch
from torch import nn


def ref_matrix(w: torch.Tensor, scheme: str) -> torch.Tensor:
    if scheme == "linear":
        return w
    n, c, kh, kw = w.shape
    if scheme == "channel":
        return w.reshape(n, c * kh * kw)
    if scheme == "spatial":
        return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return w.reshape(n, c, kh * kw)


def ref_reconstruct(w: torch.Tensor, scheme: str, r: int) -> torch.Tensor:
    """Rank-r truncated SVD of the scheme's matrix, mapped back to the kernel shape by hand."""
    m = ref_matrix(w, scheme)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    approx = u[..., :r] @ torch.diag_embed(s[..., :r]) @ vh[..., :r, :]
    if scheme == "spatial":
        n, c, kh, kw = w.shape
        return approx.reshape(c, kh, n, kw).permute(2, 0, 1, 3)
    return approx.reshape(w.shape)


def ref_energy_rank(s: torch.Tensor, e: float) -> int:
    total = float((s ** 2).sum())
    acc = 0.0
    for k, v in enumerate(s.tolist(), start=1):
        acc += v * v
        if acc / total >= e:
            return k
    return len(s)


CONV_CASES = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=0, bias=False),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=(5, 3), stride=1, padding="same", dilation=(2, 1)),
    dict(kernel_size=(2, 4), stride=1, padding="same"),        # even kernels: asymmetric "same" padding
    dict(kernel_size=3, stride=1, padding="valid", dilation=2, bias=False),
    dict(kernel_size=3, stride=(1, 2), padding=(2, 0), dilation=(2, 1)),
    dict(kernel_size=3, stride=1, padding=1, padding_mode="reflect"),
]


def make_conv(case: dict, cin: int = 5, cout: int = 7) -> nn.Conv2d:
    """A float64 conv of ``case`` with fixed weights."""
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, **case).double()


def ref_tiled_reconstruct(w: torch.Tensor, tiles: int, r: int) -> torch.Tensor:
    """DeepTwist tiling by hand: input-channel groups, each lowered and truncated on its own."""
    parts = []
    for g in torch.chunk(w, tiles, dim=1):
        m = g.reshape(g.shape[0], -1)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        parts.append((u[:, :r] @ torch.diag(s[:r]) @ vh[:r]).reshape(g.shape))
    return torch.cat(parts, dim=1)
