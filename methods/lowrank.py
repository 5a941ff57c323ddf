"""The low-rank building blocks every method shares: schemes, rank rules, factorized layers,
MAC counts, the batched projection used during training, and whole-model decomposition.

No method re-implements a reshape or a rank rule: they all come from here.

Schemes (see ``shared/reference/methods.md``), for a conv weight ``W`` of shape ``(N, C, kh, kw)``:

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

Rank rules are strings so a spec can grid-expand and hash them:
``energy:0.9`` ``value:0.05`` ``ratio:0.5`` ``rank:8`` ``entropy:0.9`` ``speedup:2.0``.
``speedup`` is a whole-model rule: one global energy threshold, found by bisection, so the
model's MACs hit ``dense / speedup`` (see :func:`decompose_model`).

MACs: one multiply-add is one MAC, per image, on conv, linear and matmul-type ops: what the
harness's fvcore count (``bench.measure.count_macs``) reports, so targets set here are hit on
the number in the result row.

Public API: ``parse_rule``, ``rank_mask``, ``rank_from_rule``; ``scheme_for``, ``to_matrix``,
``from_matrix``, ``full_rank``, ``factorize``, ``reconstruct``, ``check_tiles``, ``layer_tiles``;
``dense_macs``, ``factorized_macs``, ``probe_layers``, ``model_macs``; ``layer_reasons``,
``select_layers``, ``layer_choice``; ``project``; ``decompose_model``, ``build_factorized``,
``max_speedup``, ``check_reachable``, ``method_report``.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Optional, Sequence, TypedDict, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

Scheme = Literal["channel", "spatial", "linear", "decoupling"]
SCHEMES: tuple[str, ...] = ("channel", "spatial", "linear", "decoupling")
CONV_SCHEMES: tuple[str, ...] = ("channel", "spatial", "decoupling")
RULE_KINDS: tuple[str, ...] = ("energy", "value", "ratio", "rank", "entropy", "speedup")
_ACCEPTED_RULES = ('"energy:E" (0<E<=1), "value:T" (T>=0), "ratio:Q" (0<Q<=1), "rank:R" (int R>=1), '
                   '"entropy:TAU" (0<TAU<=1), "speedup:S" (S>1)')


class LayerReport(TypedDict):
    """One Conv2d/Linear of a decomposed model. ``rank``/``macs`` are per layer (``macs`` equals
    ``dense_macs`` when skipped); ``full_rank`` and ``rank`` are per tile when ``tiles`` > 1."""

    name: str
    shape: list[int]
    scheme: str
    rank: Optional[int]
    full_rank: Optional[int]
    dense_macs: Optional[int]
    macs: Optional[int]
    skipped: Optional[str]       # None, or why the layer stayed dense
    tiles: int


# --------------------------------------------------------------------------- rank rules


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
    """Parse ``"kind:value"``; bad input -> ValueError naming ``field``, the value and what is accepted."""
    if isinstance(text, Rule):
        return text
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"{field}: got {text!r}; accepted: {_ACCEPTED_RULES}")
    kind, _, raw = text.partition(":")
    kind = kind.strip().lower()
    if kind not in RULE_KINDS:
        raise ValueError(f"{field}: unknown kind {kind!r} in {text!r}; accepted: {_ACCEPTED_RULES}")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{field}: value {raw!r} in {text!r} is not a number; accepted: {_ACCEPTED_RULES}") from None
    ok = math.isfinite(value) and {
        "energy": 0.0 < value <= 1.0,
        "entropy": 0.0 < value <= 1.0,
        "ratio": 0.0 < value <= 1.0,
        "value": value >= 0.0,
        "rank": value >= 1 and value == int(value),
        "speedup": value > 1.0,   # 1.0 would compress nothing: not a target
    }[kind]
    if not ok:
        raise ValueError(f"{field}: {text!r} is out of range; accepted: {_ACCEPTED_RULES}")
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
        raise ValueError(f"rule: {rule} is a whole-model rule; use decompose_model(..., example_input=...) "
                         f"or a per-layer rule: energy, value, ratio, rank, entropy")
    return mask | (idx == 0)


def rank_from_rule(s: Tensor, rule: Union[str, Rule]) -> int:
    """Rank kept by ``rule`` for one 1-D spectrum ``s`` (sorted descending). Host sync: not for hot loops."""
    if s.dim() != 1:
        raise ValueError(f"s: expected a 1-D spectrum, got shape {tuple(s.shape)}")
    return int(rank_mask(s, rule).sum())


# --------------------------------------------------------------------------- schemes


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: got {scheme!r}; accepted: {', '.join(SCHEMES)}")
    return scheme


def scheme_for(module: nn.Module, scheme: str) -> Optional[str]:
    """None if ``module`` can take ``scheme``; otherwise the reason it is left dense."""
    check_scheme(scheme)
    if scheme == "linear":
        return None if isinstance(module, nn.Linear) else f"{type(module).__name__}: linear scheme needs nn.Linear"
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__}: {scheme} scheme needs nn.Conv2d"
    if module.groups != 1:
        return f"grouped conv (groups={module.groups}): {scheme} scheme needs groups=1"
    kh, kw = module.kernel_size
    if scheme in ("spatial", "decoupling") and kh * kw == 1:
        return f"1x1 kernel: nothing to separate with the {scheme} scheme"
    return None


def check_tiles(scheme: str, tiles: int, in_channels: Optional[int] = None) -> int:
    """Validate a tile count: only the channel scheme tiles, and tiles must split the input channels."""
    if not isinstance(tiles, int) or isinstance(tiles, bool) or tiles < 1:
        raise ValueError(f"tiles: got {tiles!r}; accepted: an int >= 1 (1 = no tiling)")
    if tiles > 1 and scheme != "channel":
        raise ValueError(f"tiles: got {tiles} with scheme {scheme!r}; accepted: tiles > 1 only with 'channel'")
    if tiles > 1 and in_channels is not None and in_channels % tiles:
        raise ValueError(f"tiles: {tiles} does not divide the layer's {in_channels} input channels; "
                         f"accepted: a divisor of {in_channels}")
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


@contextlib.contextmanager
def _svd_threads(x: Tensor) -> Iterator[None]:
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


def _numeric_padding(conv: nn.Conv2d) -> Any:
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
    with _svd_threads(matrix):
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
        raise ValueError(f"layer: cannot factorize with scheme {scheme!r}: {reason}")
    full = full_rank(module, scheme, tiles)
    if not isinstance(rank, int) or not 1 <= rank <= full:
        raise ValueError(f"rank: got {rank!r}; accepted: an int in [1, {full}] for this layer and scheme")
    w = module.weight.detach()
    kw_ = {"device": w.device, "dtype": w.dtype}
    padding = _numeric_padding(module) if isinstance(module, nn.Conv2d) else None
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


# --------------------------------------------------------------------------- MACs


def _pair(v: Any) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # type: ignore[return-value]


def dense_macs(module: nn.Module, out_hw: Sequence[int], out_rows: int = 1) -> int:
    """MACs per image of a dense conv (``out_hw`` = output H, W) or linear (``out_rows`` = number
    of output vectors per image, 1 for a plain classifier head)."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * out_rows
    n, cg, kh, kw = module.weight.shape
    return n * cg * kh * kw * out_hw[0] * out_hw[1]


def factorized_macs(module: nn.Module, scheme: str, rank: int, out_hw: Sequence[int] = (1, 1),
                    in_hw: Optional[Sequence[int]] = None, out_rows: int = 1, tiles: int = 1) -> int:
    """MACs per image of ``factorize(module, scheme, rank)`` (formulas of reference/methods.md).

    ``spatial``: the kh x 1 conv runs at (H_out, W_in); ``decoupling``: the 1x1 conv runs at the
    input resolution. ``in_hw`` defaults to the smallest input giving ``out_hw`` (exact for
    'same'-style padding at stride 1). ``tiles`` T (channel): ``r*C*kh*kw + N*T*r`` per pixel."""
    check_scheme(scheme)
    if scheme == "linear":
        return rank * (module.in_features + module.out_features) * out_rows
    n, c, kh, kw = module.weight.shape
    ho, wo = out_hw
    if in_hw is None:
        (sh, sw), (dh, dw) = _pair(module.stride), _pair(module.dilation)
        ph, pw = (0, 0) if isinstance(module.padding, str) else _pair(module.padding)
        if module.padding == "same":
            in_hw = (ho, wo)
        else:
            in_hw = ((ho - 1) * sh + dh * (kh - 1) + 1 - 2 * ph, (wo - 1) * sw + dw * (kw - 1) + 1 - 2 * pw)
    hi, wi = in_hw
    if scheme == "channel":
        return (rank * c * kh * kw + n * tiles * rank) * ho * wo
    if scheme == "spatial":
        return rank * c * kh * ho * wi + n * rank * kw * ho * wo
    return n * rank * c * hi * wi + n * rank * kh * kw * ho * wo  # decoupling


class _CountMacs(TorchFunctionMode):
    """Counts the multiply-accumulates of every conv, linear and matmul-type op one forward runs,
    whether called by a module or functionally: the op set ``bench.measure.count_macs`` gives
    fvcore (norms, pooling and elementwise ops are not MACs there, as in published counts).
    einsum is not counted (fvcore's einsum rule depends on the equation)."""

    _WEIGHTED = (F.conv1d, F.conv2d, F.conv3d, F.linear)  # MACs = outputs x one filter's size
    _MATMUL = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm,
               torch.bmm, torch.Tensor.bmm)               # MACs = outputs x inner dimension

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self._WEIGHTED:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.macs += out.numel() * (weight.shape[-1] if func is F.linear else weight[0].numel())
        elif func in self._MATMUL:
            self.macs += out.numel() * args[0].shape[-1]
        elif func is torch.addmm:
            self.macs += out.numel() * args[1].shape[-1]
        return out


@dataclass
class _Probe:
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    out_rows: int
    calls: int = 0


def probe_layers(model: nn.Module, example_input: Any) -> tuple[dict[str, _Probe], int]:
    """Run ``example_input`` once (eval mode, no grad) with forward hooks; return, per Conv2d /
    Linear module name, its input/output sizes, and the per-image MACs of every *other* MAC op
    (functional convs/linears, matmuls, e.g. attention), so that whole-model totals here equal
    the harness's fvcore count (``bench.measure.count_macs``) without tracing."""
    probes: dict[str, _Probe] = {}
    other = [0]
    batch = example_input.shape[0] if isinstance(example_input, Tensor) else 1
    hooks = []

    def layer_hook(name: str):
        def hook(mod: nn.Module, inp: tuple, out: Tensor) -> None:
            if name in probes:  # a layer reused in one forward: count every call
                probes[name].calls += 1
            elif isinstance(mod, nn.Conv2d):
                probes[name] = _Probe(tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]), 1, calls=1)
            else:  # Linear: one output vector per leading index, e.g. tokens
                probes[name] = _Probe((1, 1), (1, 1), out.numel() // (out.shape[-1] * batch), calls=1)
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(layer_hook(name)))
    modes = {m: m.training for m in model.modules()}  # restored per module: some may be frozen
    model.eval()  # BN running stats must not move; dropout off
    try:
        with torch.no_grad(), _CountMacs() as counter:
            model(example_input)
        layer_macs = sum(dense_macs(model.get_submodule(n), p.out_hw, p.out_rows) * p.calls
                         for n, p in probes.items()) * batch
        other[0] = counter.macs - layer_macs
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return probes, other[0] // batch


# --------------------------------------------------------------------------- layer choice


def layer_reasons(model: nn.Module, kinds: Sequence[str] = ("conv",), min_kernel: int = 2,
                  skip_first: bool = True, include_stride2: bool = True) -> list[tuple[str, Optional[str]]]:
    """Every Conv2d/Linear in ``model`` with None (chosen) or the reason it is not chosen."""
    for k in kinds:
        if k not in ("conv", "linear"):
            raise ValueError(f"kinds: got {k!r}; accepted: 'conv', 'linear'")
    out: list[tuple[str, Optional[str]]] = []
    first_conv_seen = False
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            is_first = not first_conv_seen
            first_conv_seen = True
            kh, kw = m.kernel_size
            if "conv" not in kinds:
                out.append((name, "conv layers not selected"))
            elif skip_first and is_first:
                out.append((name, "first conv (kept dense, as the official TRP code does)"))
            elif m.groups != 1:
                out.append((name, f"grouped conv (groups={m.groups})"))
            elif max(kh, kw) < min_kernel:
                out.append((name, f"{kh}x{kw} kernel (min_kernel={min_kernel})"))
            elif not include_stride2 and max(_pair(m.stride)) > 1:
                out.append((name, f"stride {tuple(_pair(m.stride))} (include_stride2=False)"))
            else:
                out.append((name, None))
        elif isinstance(m, nn.Linear):
            out.append((name, None if "linear" in kinds else "linear layers not selected"))
    return out


def select_layers(model: nn.Module, kinds: Sequence[str] = ("conv",), min_kernel: int = 2,
                  skip_first: bool = True, include_stride2: bool = True) -> list[str]:
    """Names of the layers to compress. Defaults are the official TRP choice: every Conv2d with a
    kernel larger than 1x1 except the network's first conv (stride-2 convs included)."""
    return [n for n, r in layer_reasons(model, kinds, min_kernel, skip_first, include_stride2) if r is None]


def default_kinds(scheme: str) -> tuple[str, ...]:
    return ("linear",) if scheme == "linear" else ("conv",)


LAYER_CHOICES: tuple[str, ...] = ("official", "all")


def layer_choice(model: nn.Module, scheme: str, layers: Union[str, Sequence[str]] = "official",
                 include_stride2: bool = True) -> list[tuple[str, Optional[str]]]:
    """Every Conv2d/Linear with None (to compress under ``scheme``) or why it stays dense.

    ``layers``: ``"official"`` (TRP's choice: convs larger than 1x1 except the first; every
    Linear for the linear scheme), ``"all"`` (every layer the scheme can take, first conv and
    1x1 convs included), or an explicit list of layer names."""
    check_scheme(scheme)
    if isinstance(layers, str):
        if layers not in LAYER_CHOICES:
            raise ValueError(f"layers: got {layers!r}; accepted: {', '.join(LAYER_CHOICES)} or a list of layer names")
        official = layers == "official"
        rows = layer_reasons(model, default_kinds(scheme), min_kernel=2 if official else 1,
                             skip_first=official, include_stride2=include_stride2)
    else:
        rows = layer_reasons(model, ("conv", "linear"))
        known = {n for n, _ in rows}
        unknown = [n for n in layers if n not in known]
        if unknown:
            names = [n for n, _ in rows]  # model order reads best
            raise ValueError(f"layers: {unknown} are not Conv2d/Linear layers of the model; accepted: "
                             f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
        wanted = set(layers)
        rows = [(n, None if n in wanted else "not in layers") for n, _ in rows]
    return [(n, r if r is not None else scheme_for(model.get_submodule(n), scheme)) for n, r in rows]


# --------------------------------------------------------------------------- batched projection


SOLVERS: tuple[str, ...] = ("svd", "gram", "auto", "warm")
# "auto" uses the Gram solver where one side is at least this many times the other: the Gram
# matrix is then small; on square-ish matrices the float64 eigensolve costs as much as the SVD
# (measured on CPU in BENCHMARKS.md)
AUTO_GRAM_ASPECT = 2.0
# LAPACK/cuSOLVER drivers torch.linalg.svd takes on CUDA only; "svd-gesvdj" etc. pick one
CUDA_SVD_DRIVERS: tuple[str, ...] = ("gesvd", "gesvdj", "gesvda")

# "warm": TRP at period 1 projects almost the same weights at every step, and weights it has
# projected have a few large singular values over a small tail, with a wide gap at the cut
# (measured during training: BENCHMARKS.md). So the previous step's top eigenvectors of the Gram
# matrix start a subspace iteration that converges in a couple of products, and a k x k
# eigensolve (k = largest rank + WARM_GUARD) replaces the m x m one. A residual check accepts
# the result only where its top-r subspace provably lies within WARM_TOL of the exact one;
# anywhere else the whole group falls back to the full Gram eigensolve, exactly as "gram".
WARM_ITERS = 2          # subspace iterations before the check (each: two thin products and a thin QR)
WARM_TOL = 1e-7         # bound on sin(angle) between the accepted and the exact top-r subspace
WARM_GUARD = 4          # vectors kept beyond the largest rank, so the cut lies inside the block
WARM_MAX_FRACTION = 0.5  # above this share of m the k x k solve saves too little: stay cold
WARM_RULES: tuple[str, ...] = ("energy", "value")  # rules decidable from the top-k and the trace


def check_solver(solver: str, field: str = "solver") -> str:
    """Validate a projection solver name: one of :data:`SOLVERS`, or ``svd-<driver>`` (CUDA)."""
    accepted = list(SOLVERS) + [f"svd-{d}" for d in CUDA_SVD_DRIVERS]
    if solver not in accepted:
        raise ValueError(f"{field}: got {solver!r}; accepted: {', '.join(accepted)} (svd-* on CUDA only)")
    return solver


def _project_svd(batch: Tensor, rule: Rule, with_subgradient: bool, driver: Optional[str]
                 ) -> tuple[Tensor, Optional[Tensor]]:
    """Exact: one batched ``torch.linalg.svd``; the rank enters as a mask on ``s``."""
    with _svd_threads(batch):
        u, s, vh = torch.linalg.svd(batch, full_matrices=False, driver=driver)
    keep = rank_mask(s, rule).to(s.dtype)                    # (B, k), stays on device
    proj = (u * (s * keep).unsqueeze(-2)) @ vh
    sub = (u * keep.unsqueeze(-2)) @ vh if with_subgradient else None
    return proj, sub


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
    with _svd_threads(a):
        lam, q = torch.linalg.eigh(a)                        # ascending eigenvalues
    return lam.flip(-1).clamp_min(0).sqrt(), q.flip(-1)


def _project_gram(batch: Tensor, rule: Rule, with_subgradient: bool) -> tuple[Tensor, Optional[Tensor]]:
    """The same projection from the eigendecomposition of the small Gram matrix: for ``X``
    (m x n, m <= n; a tall matrix is transposed first), ``X X^T = U diag(s^2) U^T`` gives ``U``
    and ``s`` (see :func:`_project_from_eigs`). An m x m symmetric eigensolver plus matrix
    products is far cheaper than a general SVD of X."""
    x, tall = _wide(batch)
    s, q = _full_eigs(_gram(x))
    return _project_from_eigs(x, tall, s, q, rank_mask(s, rule), with_subgradient)


def _warm_eigs(x64: Tensor, q: Tensor, rule: Rule) -> Optional[tuple[Tensor, Tensor, Tensor, int]]:
    """Top-k eigenpairs of the Gram matrices ``A = X X^T`` of ``x64`` (B, m, n; float64) from a
    start ``q`` (B, m, k), as ``(s, q, keep, largest rank)``: singular values, left singular
    vectors, the rule's mask; None where any matrix fails the check (one host read-back for
    both answers). A is never formed: ``A v = X (X^T v)`` costs 2mnk, not the Gram's m^2 n.

    Subspace iteration (``q <- qr(A q)``, :data:`WARM_ITERS` times), then Rayleigh-Ritz: Ritz
    values ``t`` and vectors. The energy left outside the block is ``tail = |X|_F^2 - sum(t)``;
    with it as one extra value, the rule's mask on the top k is exactly the mask on the full
    spectrum as long as the cut falls inside the block (checked). The check (Weyl and
    Davis-Kahan): with ``R`` the residual ``A q - q diag(t)``, every eigenvalue of A beyond the
    kept r is at most ``max(t_{r+1}, tail) + |R|``, so ``sep = t_r - max(t_{r+1}, tail) - 2|R|``
    > 0 separates the top-r subspace, and ``|R_kept| / sep`` bounds the sine of its angle to
    the exact one."""
    for _ in range(WARM_ITERS):
        q = torch.linalg.qr(x64 @ (q.mT @ x64).mT).Q         # (q^T X)^T: the fast side for BLAS
    yt = q.mT @ x64                                          # (B, k, n): A q = X yt^T
    with _svd_threads(x64):
        t, w = torch.linalg.eigh(yt @ yt.mT)                 # q^T A q, k x k: small, batched
    t, w = t.flip(-1).clamp_min(0), w.flip(-1)
    q, y = q @ w, yt.mT @ w
    tail = (torch.linalg.vector_norm(x64, dim=(-2, -1)).square() - t.sum(-1)).clamp_min(0)  # |X|_F^2 = trace(A)
    keep_k1 = rank_mask(torch.cat([t, tail[..., None]], -1).sqrt(), rule)
    keep = keep_k1[..., :-1]
    k = t.shape[-1]
    r = keep.sum(-1, keepdim=True)                           # (B, 1)
    cols = (x64 @ y - q * t.unsqueeze(-2)).norm(dim=-2)      # residual of each Ritz pair, (B, k)
    t_r = t.gather(-1, r - 1).squeeze(-1)
    t_next = t.gather(-1, r.clamp_max(k - 1)).squeeze(-1)
    sep = t_r - torch.maximum(t_next, tail) - 2 * cols.norm(dim=-1)
    ok = ~keep_k1[..., k - 1] & ~keep_k1[..., k] & (sep > 0) & ((cols * keep).norm(dim=-1) <= WARM_TOL * sep)
    r_max = int(torch.where(ok.all(), r.max(), -1))          # the one host sync
    return (t.sqrt(), q, keep, r_max) if r_max > 0 else None


@dataclass
class WarmStart:
    """What ``solver="warm"`` keeps between calls on the same weights: the top eigenvectors of
    each shape group's Gram matrices, and how many group projections took the warm path or ran
    the full eigensolve (so a report can say how often the fast path held)."""

    starts: dict[tuple, Tensor] = field(default_factory=dict)
    warm: int = 0
    cold: int = 0


def _project_warm(batch: Tensor, rule: Rule, with_subgradient: bool, state: Optional[WarmStart], key: tuple
                  ) -> tuple[Tensor, Optional[Tensor]]:
    """The Gram projection, started from the factors ``state.starts[key]`` that the previous
    call on the same group left (see :data:`WARM_ITERS`); a cold start, a rule the top-k cannot
    decide, or a failed check runs the full eigensolve instead. ``state`` None keeps nothing:
    every call is ``gram``."""
    if state is None:
        return _project_gram(batch, rule, with_subgradient)
    x, tall = _wide(batch)
    m = x.shape[-2]
    q0 = state.starts.get(key)
    if rule.kind in WARM_RULES and q0 is not None and q0.shape[:-1] == (*x.shape[:-2], m):
        found = _warm_eigs(x.to(torch.float64), q0, rule)
        if found is not None:
            s, q, keep, r_max = found
            state.warm += 1
            state.starts[key] = q[..., : min(q.shape[-1], r_max + WARM_GUARD)]
            top = slice(0, r_max)                            # nothing past the largest rank is kept
            return _project_from_top(x, tall, s[..., top], q[..., top], keep[..., top], with_subgradient)
    s, q = _full_eigs(_gram(x))
    keep = rank_mask(s, rule)
    state.cold += 1
    k = int(keep.sum(-1).max()) + WARM_GUARD if rule.kind in WARM_RULES else m  # host sync, like eigh's
    if k <= WARM_MAX_FRACTION * m:
        state.starts[key] = q[..., :k]
    else:
        state.starts.pop(key, None)
    return _project_from_eigs(x, tall, s, q, keep, with_subgradient)


def project(weights: Sequence[Tensor], scheme: str, rule: Union[str, Rule], with_subgradient: bool = True,
            tiles: Union[int, Sequence[int]] = 1, solver: str = "svd", state: Optional[WarmStart] = None
            ) -> tuple[list[Tensor], list[Optional[Tensor]]]:
    """Project each weight onto its low-rank set under ``rule``, batched and without host sync.

    All matrices of one shape (and dtype/device), whatever layer, filter or tile they come
    from, are stacked and go through one ``torch.linalg.svd`` call; the rank is applied as a mask (:func:`rank_mask`), never read back
    to the host, so a training step keeps the GPU queue full. Returns the projected weights
    ``U_r diag(s_r) V_r^T`` and, if asked, the nuclear-norm sub-gradients ``U_r V_r^T``, both in
    each weight's own shape and order. (PyTorch documents that torch.linalg.svd itself
    synchronizes a CUDA device with the CPU, to check for convergence errors; grouping keeps that
    to one per distinct matrix shape, and nothing else here syncs.)

    ``tiles`` (one int, or one per weight; see :func:`layer_tiles`): project each column tile
    separately (DeepTwist's tiling); tiles of every layer batch together by shape.

    ``solver``: ``"svd"`` (exact, the default), ``"svd-<driver>"`` (exact, a cuSOLVER driver on
    CUDA), ``"gram"`` (eigendecomposition of the small Gram matrix in float64; same ranks and
    agreement to the weights' rounding, faster on wide matrices: see :func:`_project_gram`),
    ``"auto"`` (gram for groups whose matrices are at least :data:`AUTO_GRAM_ASPECT` times
    wider than tall or the reverse, svd for the others) or ``"warm"`` (the Gram solver started
    from the factors the previous call left in ``state``, a :class:`WarmStart` the caller keeps between calls
    on the same weights: see :data:`WARM_ITERS`; it checks its answer and falls back to the full
    eigensolve, so it keeps gram's exactness; it reads back one flag per shape group)."""
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
        if solver == "warm":
            key = (rows, cols, batch.shape[0], str(batch.dtype), str(batch.device))
            proj_b, sub_b = _project_warm(batch, rule, with_subgradient, state, key)
        elif solver == "gram" or (solver == "auto" and max(rows, cols) >= AUTO_GRAM_ASPECT * min(rows, cols)):
            proj_b, sub_b = _project_gram(batch, rule, with_subgradient)
        else:  # svd, auto on a square-ish group, or svd-<driver>
            driver = solver.partition("-")[2] or None
            if driver and batch.device.type != "cuda":
                raise ValueError(f"solver: {solver!r} needs CUDA (the weights are on {batch.device}); "
                                 f"accepted on CPU: {', '.join(SOLVERS)}")
            proj_b, sub_b = _project_svd(batch, rule, with_subgradient, driver)
        sizes = [f.shape[0] for f in flats]
        proj = proj_b.split(sizes)
        sub = sub_b.split(sizes) if sub_b is not None else None
        for j, i in enumerate(idx):
            wshape, mshape = weights[i].shape, mats[i].shape
            projected[i] = from_matrix(proj[j].reshape(mshape), scheme, wshape, tl[i])
            if sub is not None:
                subgrads[i] = from_matrix(sub[j].reshape(mshape), scheme, wshape, tl[i])
    return projected, subgrads  # type: ignore[return-value]


# --------------------------------------------------------------------------- whole model


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (works inside Sequential/ModuleList too)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _layer_spectrum(module: nn.Module, scheme: str, tiles: int = 1) -> Tensor:
    """Singular values, float64 on CPU (decomposition is a one-off; precision beats speed).
    Decoupling and tiles give a batch ``(filters or tiles, k)``."""
    m = to_matrix(module.weight.detach().to("cpu", torch.float64), scheme, tiles)
    with _svd_threads(m):
        return torch.linalg.svdvals(m)


def _rank_for(spectrum: Tensor, rule: Rule) -> int:
    # per filter (decoupling) or per tile: the layer's one rank is the largest any of them needs
    return int(rank_mask(spectrum, rule).sum(-1).max())


@dataclass
class _Plan:
    """Which layers a decomposition touches and what each costs, before any SVD."""

    reports: list[LayerReport]
    chosen: list[int]                 # indices into reports
    modules: dict[str, nn.Module]
    probes: dict[str, _Probe]
    other_macs: int
    scheme: str

    def fmacs(self, i: int, rank: int) -> int:
        rep = self.reports[i]
        p = self.probes[rep["name"]]
        return factorized_macs(self.modules[rep["name"]], self.scheme, rank, p.out_hw, p.in_hw, p.out_rows,
                               rep["tiles"]) * p.calls

    @property
    def dense_total(self) -> int:
        return self.other_macs + sum(r["dense_macs"] or 0 for r in self.reports)


def _plan(model: nn.Module, scheme: str, layers: Union[None, str, Sequence[str]], example_input: Optional[Tensor],
          include_stride2: bool, tiles: int) -> _Plan:
    check_scheme(scheme)
    check_tiles(scheme, tiles)
    probes, other = probe_layers(model, example_input) if example_input is not None else ({}, 0)
    reasons = layer_choice(model, scheme, "official" if layers is None else layers, include_stride2)
    reports: list[LayerReport] = []
    chosen: list[int] = []
    modules: dict[str, nn.Module] = {}
    for name, reason in reasons:
        mod = model.get_submodule(name)
        modules[name] = mod
        p = probes.get(name)
        if example_input is not None and p is None and reason is None:
            reason = "not reached by the forward pass"
        t = layer_tiles(mod, scheme, tiles) if reason is None else 1
        d = dense_macs(mod, p.out_hw, p.out_rows) * p.calls if p else None
        reports.append({"name": name, "shape": list(mod.weight.shape), "scheme": scheme, "rank": None,
                        "full_rank": None if reason else full_rank(mod, scheme, t),
                        "dense_macs": d, "macs": d, "skipped": reason, "tiles": t})
        if reason is None:
            chosen.append(len(reports) - 1)
    return _Plan(reports, chosen, modules, probes, other, scheme)


def decompose_model(model: nn.Module, scheme: str, rule: Union[str, Rule],
                    layers: Union[None, str, Sequence[str]] = None, example_input: Optional[Tensor] = None,
                    keep_dense_if_larger: bool = True, include_stride2: bool = True, tiles: int = 1,
                    ) -> tuple[nn.Module, list[LayerReport]]:
    """Factorize ``model``'s layers (a deep copy; ``model`` is untouched) under ``scheme``/``rule``.

    ``layers``: ``"official"`` (default; the official TRP choice for conv schemes, every
    ``nn.Linear`` for ``linear``), ``"all"``, or a list of names (see :func:`layer_choice`).
    ``example_input`` (a batch) is needed for MAC counts and for the ``speedup`` rule. A layer
    whose factorized MACs would not be lower than its dense MACs stays dense
    (``keep_dense_if_larger``), with the reason in its report. ``tiles`` (channel scheme):
    factorize each input-channel tile separately (see :func:`factorize`).

    Returns the factorized model and one :class:`LayerReport` per Conv2d/Linear in the model
    (skipped ones carry the reason). :func:`build_factorized` rebuilds the same structure from the
    reports, e.g. to load a saved state dict."""
    rule = parse_rule(rule)
    if rule.is_global and example_input is None:
        raise ValueError(f"example_input: required for rule {rule} (MACs are counted on it)")
    out = copy.deepcopy(model)
    plan = _plan(out, scheme, layers, example_input, include_stride2, tiles)
    reports = plan.reports
    spectra = [_layer_spectrum(plan.modules[reports[i]["name"]], scheme, reports[i]["tiles"]) for i in plan.chosen]
    if rule.is_global:
        ranks = _ranks_for_speedup(plan, spectra, rule.value)
    else:
        ranks = [_rank_for(spec, rule) for spec in spectra]

    for i, r in zip(plan.chosen, ranks):
        rep = reports[i]
        if example_input is not None:
            f = plan.fmacs(i, r)
            if keep_dense_if_larger and f >= rep["dense_macs"]:
                rep["skipped"] = f"rank {r} of {rep['full_rank']}: factorized MACs {f} >= dense {rep['dense_macs']}"
                continue
            rep["macs"] = f
        rep["rank"] = r
        set_module(out, rep["name"], factorize(plan.modules[rep["name"]], scheme, r, rep["tiles"]))
    return out, reports


def max_speedup(model: nn.Module, scheme: str, example_input: Tensor, layers: Union[None, str, Sequence[str]] = None,
                include_stride2: bool = True, tiles: int = 1) -> float:
    """The largest MAC speed-up ``decompose_model`` can reach (rank 1 in every chosen layer);
    depends only on the architecture, so a ``speedup:`` rule can be checked before training."""
    plan = _plan(model, scheme, layers, example_input, include_stride2, tiles)
    least = plan.dense_total - sum(plan.reports[i]["dense_macs"] - min(plan.fmacs(i, 1), plan.reports[i]["dense_macs"])
                                   for i in plan.chosen)
    return plan.dense_total / least


def check_reachable(model: nn.Module, scheme: str, rule: Union[str, Rule], example_input: Tensor,
                    layers: Union[None, str, Sequence[str]] = None, include_stride2: bool = True, tiles: int = 1,
                    field: str = "rule") -> None:
    """For a ``speedup:S`` rule, fail now (before training) if ``S`` is out of reach."""
    rule = parse_rule(rule, field)
    if rule.is_global:
        best = max_speedup(model, scheme, example_input, layers, include_stride2, tiles)
        if rule.value > best:
            raise ValueError(f"{field}: {rule} is not reachable with scheme {scheme!r} on these layers; "
                             f"accepted: speedup up to {best:.3f} (rank 1 everywhere)")


def _ranks_for_speedup(plan: _Plan, spectra: list[Tensor], speedup: float) -> list[int]:
    """One global energy threshold ``e`` for all chosen layers, found by bisection, so that the
    model's MACs (every conv/linear, dense or not, plus other matmul-type ops) come as close
    as the rank steps allow to ``dense_total / speedup``. Energy is scale-free, so one threshold is
    comparable across layers; MACs are monotone in ``e``, so bisection converges."""
    reports = plan.reports
    target = plan.dense_total / speedup
    fixed = plan.other_macs + sum(r["dense_macs"] or 0 for r in reports if r["skipped"] is not None)
    # cost table per layer: MACs at each rank, capped at dense (such a layer would stay dense)
    tables = [[min(plan.fmacs(i, r), reports[i]["dense_macs"]) for r in range(1, spec.shape[-1] + 1)]
              for i, spec in zip(plan.chosen, spectra)]

    def ranks_at(e: float) -> list[int]:
        return [_rank_for(spec, Rule("energy", e)) if e > 0 else 1 for spec in spectra]

    def total(rs: list[int]) -> int:
        return fixed + sum(t[r - 1] for t, r in zip(tables, rs))

    lo, hi = 0.0, 1.0
    if total(ranks_at(lo)) > target:
        best = plan.dense_total / total(ranks_at(lo))
        raise ValueError(f"rule: speedup:{speedup} is not reachable with these layers; "
                         f"accepted: speedup up to {best:.3f} (rank 1 everywhere)")
    for _ in range(60):  # 2^-60: far below the gap between two distinct cumulative energies
        mid = (lo + hi) / 2
        if total(ranks_at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    r_lo, r_hi = ranks_at(lo), ranks_at(hi)
    return r_lo if abs(total(r_lo) - target) <= abs(total(r_hi) - target) else r_hi


def build_factorized(model: nn.Module, reports: Sequence[LayerReport]) -> nn.Module:
    """A deep copy of ``model`` with every non-skipped reported layer factorized at its reported
    rank (and tiles): the structure :func:`decompose_model` produced, so its saved state dict loads."""
    out = copy.deepcopy(model)
    for rep in reports:
        if rep.get("skipped") is None and rep.get("rank") is not None:
            mod = out.get_submodule(rep["name"])
            set_module(out, rep["name"], factorize(mod, rep["scheme"], int(rep["rank"]), int(rep.get("tiles", 1))))
    return out


def model_macs(model: nn.Module, example_input: Tensor) -> int:
    """Per-image MACs of ``model`` (conv, linear and matmul-type ops, the set the harness's fvcore
    count uses); fast, no tracing."""
    probes, other = probe_layers(model, example_input)
    return other + sum(dense_macs(model.get_submodule(n), p.out_hw, p.out_rows) * p.calls for n, p in probes.items())


def method_report(reports: Sequence[LayerReport], **facts: Any) -> dict[str, Any]:
    """What a method's ``report()`` returns: every layer's report, the skipped ones with their
    reasons, and ``facts`` (e.g. ``scheme=...``, ``rule=...``: the result row's columns)."""
    return {**facts, "layers": list(reports),
            "skipped": [{"name": r["name"], "reason": r["skipped"]} for r in reports if r["skipped"] is not None]}
