"""MACs: one fused multiply-add is one MAC, per image, on conv, linear and matmul-type ops.

The one counter is fvcore's (:func:`model_macs`: its jit tracer with the op handles of
:func:`mac_handles`). The result row's count (``rankbench.bench.measure.metrics.count_macs``) and every target set
here (a ``speedup:`` rule, :func:`probe_layers`' cost of the layers a decomposition leaves alone)
come from it, so a target is hit on the number the row reports. :func:`dense_macs` and
:func:`factorized_macs` are the closed formulas for one layer (the layer shapes of
``rankbench.methods.lowrank.schemes``); the tests hold them to the counter.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from rankbench.methods.lowrank.schemes import check_scheme, pair


def attention_macs(inputs: list, outputs: list) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention(q, k, v, ...)``: its two matrix
    products, ``Q K^T`` and the attention weights times ``V``: ``batch * L * S * (E + Ev)`` MACs
    for ``q`` (..., L, E) and ``v`` (..., S, Ev). Scaling, masking and the softmax are elementwise
    and left out, as everywhere else. (A transformer's attention is MACs no decomposition of its
    linears removes: without this a ViT's speed-up from its linears alone would be overstated.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn.jit_handles import get_shape

    q, v = get_shape(inputs[0]), get_shape(inputs[2])
    return math.prod(q[:-2]) * q[-2] * v[-2] * (q[-1] + v[-1])


def mac_handles(conv_only: bool = False) -> dict[str, Any]:
    """fvcore op handles that count multiply-accumulates. Norms, pooling, upsampling and other
    elementwise ops are left out on purpose: published MAC counts (and TRP's speed-ups) count
    conv/linear/matmul only, and torch.utils.flop_counter counts the same set (x2), which lets
    a test cross-check the number; attention (``scaled_dot_product_attention``) is counted as
    its two matrix products (:func:`attention_macs`; torch's counter has no formula for its CPU
    kernel). ``conv_only``: convolutions alone (the basis of the official TRP code's
    speed-ups: no FC, no BN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # fvcore's import scripts a function: torch.jit warns
        from fvcore.nn import jit_handles

    if conv_only:
        return {"aten::_convolution": jit_handles.conv_flop_jit}
    return {
        "aten::scaled_dot_product_attention": attention_macs,
        "aten::_convolution": jit_handles.conv_flop_jit,
        "aten::addmm": jit_handles.addmm_flop_jit,
        "aten::bmm": jit_handles.bmm_flop_jit,
        "aten::einsum": jit_handles.einsum_flop_jit,
        "aten::matmul": jit_handles.matmul_flop_jit,
        "aten::mm": jit_handles.matmul_flop_jit,
        "aten::linear": jit_handles.linear_flop_jit,
    }


def _batch_macs(model: nn.Module, example_input: Any, conv_only: bool = False) -> int:
    """fvcore's count of one forward of the whole batch ``example_input``, in eval mode (the
    inference graph: no dropout, BN running stats untouched); every module's mode is restored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # fvcore's import scripts a function: torch.jit warns
        from fvcore.nn.jit_analysis import JitModelAnalysis

    modes = {m: m.training for m in model.modules()}   # restored per module: some may be frozen
    model.eval()
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch.jit is deprecated upstream and warns on every trace; fvcore still needs it
            warnings.simplefilter("ignore")
            analysis = JitModelAnalysis(model, inputs).set_op_handle(**mac_handles(conv_only))
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            return int(analysis.total())
    finally:
        for m, mode in modes.items():
            m.training = mode


def _batch_size(example_input: Any) -> int:
    return int(example_input.shape[0]) if isinstance(example_input, Tensor) else 1


def _ints(sizes: Sequence[Any]) -> tuple[int, ...]:
    """Sizes as plain ints: under the jit tracer a hook may see them as 0-d tensors."""
    return tuple(int(v) for v in sizes)


def model_macs(model: nn.Module, example_input: Any, conv_only: bool = False) -> int:
    """Per-image MACs of one forward of ``model`` on the batch ``example_input``: fvcore's count
    on conv, linear and matmul-type ops (:func:`mac_handles`; ``conv_only``: convolutions only),
    divided by the batch size."""
    return _batch_macs(model, example_input, conv_only) // _batch_size(example_input)


def dense_macs(module: nn.Module, out_hw: Sequence[int], out_rows: int = 1) -> int:
    """MACs per image of a dense conv (``out_hw`` = output H, W) or linear (``out_rows`` = number
    of output vectors per image, 1 for a plain classifier head)."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * out_rows
    n, cg, kh, kw = module.weight.shape
    return n * cg * kh * kw * out_hw[0] * out_hw[1]


def factorized_macs(module: nn.Module, scheme: str, rank: int, out_hw: Sequence[int] = (1, 1),
                    in_hw: Optional[Sequence[int]] = None, out_rows: int = 1, tiles: int = 1) -> int:
    """MACs per image of ``factorize(module, scheme, rank)`` (the layer shapes of ``rankbench.methods.lowrank.schemes``).

    ``spatial``: the kh x 1 conv runs at (H_out, W_in); ``decoupling``: the 1x1 conv runs at the
    input resolution. ``in_hw`` defaults to the smallest input giving ``out_hw`` (exact for
    'same'-style padding at stride 1). ``tiles`` T (channel): ``r*C*kh*kw + N*T*r`` per pixel."""
    check_scheme(scheme)
    if scheme == "linear":
        return rank * (module.in_features + module.out_features) * out_rows
    n, c, kh, kw = module.weight.shape
    ho, wo = out_hw
    if in_hw is None:
        (sh, sw), (dh, dw) = pair(module.stride), pair(module.dilation)
        ph, pw = (0, 0) if isinstance(module.padding, str) else pair(module.padding)
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


@dataclass
class Probe:
    """What one forward showed of a Conv2d/Linear: its input and output sizes, and how often it ran."""

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    out_rows: int
    calls: int = 0


def probe_layers(model: nn.Module, example_input: Any) -> tuple[dict[str, Probe], int]:
    """Run ``example_input`` once (eval mode, no grad) through :func:`model_macs`' counter with
    forward hooks; return, per Conv2d / Linear module name, its input/output sizes, and the
    per-image MACs of every *other* MAC op (functional convs/linears, matmuls, e.g. attention),
    so that a model's total is those plus each layer's formula (:func:`dense_macs` or
    :func:`factorized_macs`) times its calls."""
    probes: dict[str, Probe] = {}
    batch = _batch_size(example_input)
    hooks = []

    def layer_hook(name: str):
        def hook(mod: nn.Module, inp: tuple, out: Tensor) -> None:
            if name in probes:  # a layer reused in one forward: count every call
                probes[name].calls += 1
            elif isinstance(mod, nn.Conv2d):
                probes[name] = Probe(_ints(inp[0].shape[-2:]), _ints(out.shape[-2:]), 1, calls=1)
            else:  # Linear: one output vector per leading index, e.g. tokens
                rows = math.prod(_ints(out.shape[:-1])) // batch
                probes[name] = Probe((1, 1), (1, 1), rows, calls=1)
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(layer_hook(name)))
    try:
        total = _batch_macs(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    layer_macs = sum(dense_macs(model.get_submodule(n), p.out_hw, p.out_rows) * p.calls for n, p in probes.items())
    return probes, total // batch - layer_macs
