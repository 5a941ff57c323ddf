"""Schemes: the matrix view a layer's weight is decomposed in, and which layers take which.

For a conv weight ``W`` of shape ``(N, C, kh, kw)``:

- ``channel``    ``W.reshape(N, C*kh*kw)``; conv ``C->r`` (kh x kw, original stride/padding/dilation)
                 then conv 1x1 ``r->N`` carrying the bias.
- ``spatial``    ``W.permute(1, 2, 0, 3).reshape(C*kh, N*kw)``; conv ``C->r`` (kh x 1) then
                 conv ``r->N`` (1 x kw); stride, padding and dilation are split per axis.
- ``linear``     ``nn.Linear`` weight ``(out, in)``; Linear ``in->r`` then Linear ``r->out``.
- ``decoupling`` per filter ``W[n].reshape(C, kh*kw)`` (a batch of N matrices); conv 1x1
                 ``C->N*r`` then a grouped conv (groups=N, ``r->1`` per group, kh x kw) that
                 applies each path's depthwise filter and sums the ``r`` paths in one op.

``tiles`` > 1 (channel scheme only; DeepTwist's tiling): the lowered matrix is split column-wise
along input-channel groups and each tile gets its own rank-r factors (a grouped first conv).

Also here: :func:`svd_threads`, the thread setting every SVD of a matrix view runs under.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from rankbench.bench.checks import bad, is_int

Scheme = Literal["channel", "spatial", "linear", "decoupling"]
SCHEMES: tuple[str, ...] = ("channel", "spatial", "linear", "decoupling")
CONV_SCHEMES: tuple[str, ...] = ("channel", "spatial", "decoupling")


def pair(v: Any) -> tuple[int, int]:
    """An int or a 2-sequence (a conv's stride, padding, ...) as an ``(H, W)`` pair."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # type: ignore[return-value]


def check_scheme(scheme: str) -> str:
    """``scheme`` if it is one of :data:`SCHEMES`; else the one-line error."""
    if scheme not in SCHEMES:
        raise bad("scheme", scheme, ", ".join(SCHEMES))
    return scheme


def scheme_for(module: nn.Module, scheme: str) -> Optional[str]:
    """None if ``module`` can take ``scheme``; otherwise the reason it is left dense."""
    check_scheme(scheme)
    if scheme == "linear":
        return None if isinstance(module, nn.Linear) else f"{type(module).__name__}: linear scheme needs nn.Linear"
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__}: {scheme} scheme needs nn.Conv2d"
    if module.groups != 1 and module.groups == module.in_channels:
        return f"depthwise conv (groups={module.groups}): {scheme} scheme needs groups=1"
    if module.groups != 1:
        return f"grouped conv (groups={module.groups}): {scheme} scheme needs groups=1"
    kh, kw = module.kernel_size
    if scheme in ("spatial", "decoupling") and kh * kw == 1:
        return f"1x1 kernel: nothing to separate with the {scheme} scheme"
    return None


def check_tiles(scheme: str, tiles: int, in_channels: Optional[int] = None) -> int:
    """Validate a tile count: only the channel scheme tiles, and tiles must split the input channels."""
    if not is_int(tiles) or tiles < 1:
        raise bad("tiles", tiles, "an int >= 1 (1 = no tiling)")
    if tiles > 1 and scheme != "channel":
        raise bad("tiles", tiles, "tiles > 1 only with scheme 'channel'", f"with scheme {scheme!r}")
    if tiles > 1 and in_channels is not None and in_channels % tiles:
        raise bad("tiles", tiles, f"a divisor of {in_channels}",
                  f"does not divide the layer's {in_channels} input channels")
    return tiles


def layer_tiles(module: nn.Module, scheme: str, tiles: int) -> int:
    """The tile count a layer actually uses: ``tiles`` where it divides the input channels, else 1
    (the layer is then approximated untiled, and its report says ``tiles: 1``)."""
    check_tiles(scheme, tiles)
    if tiles == 1 or not isinstance(module, nn.Conv2d) or module.in_channels % tiles:
        return 1
    return tiles


def to_matrix(weight: Tensor, scheme: str, tiles: int = 1) -> Tensor:
    """Matrix view ``(..., rows, cols)`` of a weight under ``scheme`` (batched for decoupling).

    ``tiles`` > 1 (channel scheme, DeepTwist's tiling): the ``N x (C*kh*kw)`` matrix split
    column-wise into ``tiles`` tiles along input-channel groups, as a batch ``(tiles, N, C/tiles*kh*kw)``."""
    check_scheme(scheme)
    if scheme == "linear":
        check_tiles(scheme, tiles)
        return weight
    n, c, kh, kw = weight.shape
    check_tiles(scheme, tiles, c)
    if scheme == "channel":
        m = weight.reshape(n, c * kh * kw)
        return m if tiles == 1 else m.reshape(n, tiles, -1).transpose(0, 1)
    if scheme == "spatial":
        return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return weight.reshape(n, c, kh * kw)  # decoupling: one (C, kh*kw) matrix per filter


def from_matrix(matrix: Tensor, scheme: str, weight_shape: Sequence[int], tiles: int = 1) -> Tensor:
    """Inverse of :func:`to_matrix`."""
    check_scheme(scheme)
    if tiles > 1:
        return matrix.transpose(0, 1).reshape(tuple(weight_shape))
    if scheme in ("linear", "channel", "decoupling"):
        return matrix.reshape(tuple(weight_shape))
    n, c, kh, kw = weight_shape
    return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()


def full_rank(module: nn.Module, scheme: str, tiles: int = 1) -> int:
    """Largest rank the scheme's matrix view of ``module.weight`` has (per tile / per filter)."""
    shape = to_matrix(module.weight.detach(), scheme, tiles).shape
    return min(shape[-2], shape[-1])


@contextlib.contextmanager
def svd_threads(x: Tensor) -> Iterator[None]:
    """Run a CPU SVD single-threaded. Layer-sized SVDs gain nothing from threads, and with the
    cores busy (Ray trials side by side) a 2-thread MKL SVD of a 64x288 float32 matrix was
    measured at 0.05-2 s against ~2 ms single-threaded. The thread count is restored after."""
    if x.device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)

