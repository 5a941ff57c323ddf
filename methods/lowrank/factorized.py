"""Factorized layers: a Conv2d/Linear replaced by its two low-rank factors under a scheme.

:func:`factorize` builds the pair from the SVD of the scheme's matrix view (exactly the dense
layer at full rank); :func:`reconstruct` gives the rank-r weight in the layer's own shape.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rankbench.bench.checks import bad

from rankbench.methods.lowrank.schemes import from_matrix, full_rank, scheme_for, svd_threads, to_matrix


class Factorized(nn.Sequential):
    """A dense layer replaced by its low-rank factors: a Sequential of two layers, so state-dict
    keys are ``<name>.0.*`` / ``<name>.1.*`` and fvcore sees ordinary convs/linears."""

    def __init__(self, first: nn.Module, second: nn.Module, scheme: str, rank: int, tiles: int = 1):
        super().__init__(first, second)
        self.scheme = scheme
        self.rank = rank
        self.tiles = tiles

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, rank={self.rank}" + (f", tiles={self.tiles}" if self.tiles > 1 else "")


def _split_axis(value: Any, axis: int) -> Any:
    """(value along H, value along W) -> the pair that keeps only ``axis``, for the spatial split."""
    if isinstance(value, str):  # "same"/"valid" act per axis, so they carry over unchanged
        return value
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    return (pair[0], 0) if axis == 0 else (0, pair[1])


def _one_per_axis(value: Any, axis: int) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    return (pair[0], 1) if axis == 0 else (1, pair[1])



def numeric_padding(conv: nn.Conv2d) -> Any:
    """'valid' -> 0 and a symmetric 'same' -> its integer pair: the same output, and fvcore only
    counts convs with numeric padding (string padding traces to an op it does not know).
    An asymmetric 'same' (even effective kernel) stays a string."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if all(t % 2 == 0 for t in total):
            return tuple(t // 2 for t in total)
    return conv.padding


def _svd_factors(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Balanced rank-r factors ``A (.., rows, r)``, ``B (.., r, cols)`` with ``A @ B`` the best
    rank-r approximation; sqrt(s) goes to both sides so neither factor's scale explodes."""
    with svd_threads(matrix):
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[..., :rank].sqrt()
    return u[..., :, :rank] * root.unsqueeze(-2), root.unsqueeze(-1) * vh[..., :rank, :]


def factorize(module: nn.Module, scheme: str, rank: int, tiles: int = 1) -> Factorized:
    """Replace ``module`` by its rank-``rank`` factorization under ``scheme`` (weights from the SVD).

    The result computes the same function as the dense layer with the rank-r reconstructed
    weight (exactly the dense layer at full rank), keeping stride, padding (int, tuple,
    "same"/"valid"), padding_mode, dilation, bias, dtype and device.

    ``tiles`` > 1 (channel scheme): each column tile (an input-channel group) gets its own rank-r
    factors; the first conv becomes a grouped conv ``C -> tiles*r`` (groups=tiles) and the 1x1
    conv ``tiles*r -> N`` sums the tiles."""
    reason = scheme_for(module, scheme)
    if reason is not None:
        raise bad("scheme", scheme, "a scheme this layer takes", f"cannot factorize the layer: {reason}")
    full = full_rank(module, scheme, tiles)
    if not isinstance(rank, int) or not 1 <= rank <= full:
        raise bad("rank", rank, f"an int in [1, {full}] for this layer and scheme")
    w = module.weight.detach()
    kw_ = {"device": w.device, "dtype": w.dtype}
    padding = numeric_padding(module) if isinstance(module, nn.Conv2d) else None
    has_bias = module.bias is not None
    with torch.no_grad():
        if scheme == "linear":
            a, b = _svd_factors(w, rank)
            first = nn.Linear(module.in_features, rank, bias=False, **kw_)
            second = nn.Linear(rank, module.out_features, bias=has_bias, **kw_)
            first.weight.copy_(b)
            second.weight.copy_(a)
        else:
            n, c, kh, kw = w.shape
            m: nn.Conv2d = module  # type: ignore[assignment]
            a, b = _svd_factors(to_matrix(w, scheme, tiles), rank)
            if scheme == "channel":  # a: ([T,] N, r), b: ([T,] r, C/T*kh*kw)
                first = nn.Conv2d(c, tiles * rank, (kh, kw), stride=m.stride, padding=padding, dilation=m.dilation,
                                  groups=tiles, padding_mode=m.padding_mode, bias=False, **kw_)
                second = nn.Conv2d(tiles * rank, n, 1, bias=has_bias, **kw_)
                first.weight.copy_(b.reshape(tiles * rank, c // tiles, kh, kw))
                # output channel t*r + j of the grouped conv is tile t's j-th component
                second.weight.copy_((a if tiles == 1 else a.permute(1, 0, 2)).reshape(n, tiles * rank, 1, 1))
            elif scheme == "spatial":
                first = nn.Conv2d(c, rank, (kh, 1), stride=_one_per_axis(m.stride, 0),
                                  padding=_split_axis(padding, 0), dilation=_one_per_axis(m.dilation, 0),
                                  padding_mode=m.padding_mode, bias=False, **kw_)
                second = nn.Conv2d(rank, n, (1, kw), stride=_one_per_axis(m.stride, 1),
                                   padding=_split_axis(padding, 1), dilation=_one_per_axis(m.dilation, 1),
                                   padding_mode=m.padding_mode, bias=has_bias, **kw_)
                # a: (C*kh, r) indexed (c, i); b: (r, N*kw) indexed (n, j)
                first.weight.copy_(a.t().reshape(rank, c, kh, 1))
                second.weight.copy_(b.reshape(rank, n, kw).permute(1, 0, 2).unsqueeze(2))
            else:  # decoupling: a (N, C, r), b (N, r, kh*kw)
                # The 1x1 mixing must come first: each output filter has its own spatial filters.
                # It runs at the input resolution; the strided grouped conv sums the r paths.
                first = nn.Conv2d(c, n * rank, 1, bias=False, **kw_)
                second = nn.Conv2d(n * rank, n, (kh, kw), stride=m.stride, padding=padding,
                                   dilation=m.dilation, groups=n, padding_mode=m.padding_mode,
                                   bias=has_bias, **kw_)
                first.weight.copy_(a.permute(0, 2, 1).reshape(n * rank, c, 1, 1))
                second.weight.copy_(b.reshape(n, rank, kh, kw))
        if has_bias:
            second.bias.copy_(module.bias.detach())
    out = Factorized(first, second, scheme, rank, tiles)
    out.train(module.training)
    return out


def reconstruct(weight: Tensor, scheme: str, rank: int, tiles: int = 1) -> Tensor:
    """The rank-r approximation of ``weight`` under ``scheme`` (per tile), in the weight's own shape."""
    a, b = _svd_factors(to_matrix(weight, scheme, tiles), rank)
    return from_matrix(a @ b, scheme, weight.shape, tiles)

