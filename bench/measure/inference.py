"""The ways a model can be run for inference, so latency is measured on the fastest honest one.

A *layout* is a memory format, optionally followed by a graph transform:

- ``contiguous`` / ``channels_last``: eager PyTorch with 4-D tensors in that memory format;
- ``+folded``: eval-mode BatchNorm folded into the conv before it (:func:`fold_batchnorm`),
  including the second conv of a factorized pair; the same function with fewer ops;
- ``+jit``: ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference`` (on CPU it folds
  conv+BN, prepacks the conv weights for oneDNN and keeps activations in its blocked layout);
- ``+compiled``: ``torch.compile`` (inductor); its compile time is spent before timing.

The dense and the compressed model get the same menu and each is timed on its best
(``rankbench.bench.measure.metrics.compare_latency``), so a latency speed-up compares like with like.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from rankbench.bench.checks import bad, unknown

MEMORY_FORMATS: tuple[str, ...] = ("contiguous", "channels_last")
GRAPHS: tuple[str, ...] = ("folded", "jit", "compiled")

# The CPU menu (fp32, batch 1; timings in BENCHMARKS.md, "Measured latency beside MAC
# speed-up"): +jit was fastest on ResNet-20/56/50 for dense and factorized alike, +folded close
# behind on the CIFAR nets, and the memory format of eager and folded won or lost by a few
# percent depending on the model, so both are on the menu. channels_last+jit is not:
# optimize_for_inference moves every conv into oneDNN's own blocked layout, so it differs from
# contiguous+jit by under 10% either way with no consistent order, while costing another trace
# and freeze (0.7 s for ResNet-56). +compiled was never faster than +jit and costs 5-30 s of
# compiling per model and layout: opt-in, like channels_last+jit.
CPU_LAYOUTS: tuple[str, ...] = ("contiguous", "channels_last", "contiguous+folded", "channels_last+folded",
                                "contiguous+jit")
# The CUDA menu: cuDNN's bf16/fp16 tensor-core convs want NHWC, and folding removes one
# memory-bound BN kernel per conv; both are module rewrites whose numerics the CPU tests check.
# jit and compile (e.g. CUDA graphs for batch 1) are opt-in on CUDA: BENCHMARKS.md has no GPU
# timings that would put them on this menu.
CUDA_LAYOUTS: tuple[str, ...] = ("channels_last", "contiguous", "channels_last+folded", "contiguous+folded")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = nn.modules.batchnorm._BatchNorm   # BatchNorm1d/2d/3d and SyncBatchNorm


def accepted_layouts() -> list[str]:
    """Every layout name :func:`check_layout` accepts."""
    return [m + g for m in MEMORY_FORMATS for g in ("", *(f"+{g}" for g in GRAPHS))]


def check_layout(layout: str, field: str = "measure.latency_layout") -> str:
    """``layout`` itself when it names a memory format and an optional graph transform; else the
    one-line error (``rankbench.bench.checks``) that names ``field``, the value and what is accepted."""
    if layout not in accepted_layouts():
        raise unknown(field, layout, ["auto", *accepted_layouts()])
    return layout


def layout_menu(layout: str | list[str] | tuple[str, ...], device: torch.device | str,
                field: str = "measure.latency_layout") -> list[str]:
    """The layouts to try: ``"auto"`` gives the device's default menu, one name or a list fixes it."""
    if layout == "auto":
        return list(CUDA_LAYOUTS if torch.device(device).type == "cuda" else CPU_LAYOUTS)
    names = [layout] if isinstance(layout, str) else list(layout)
    if not names:
        raise bad(field, names, "auto, one layout or a non-empty list")
    return list(dict.fromkeys(check_layout(n, field) for n in names))


def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """One conv computing ``bn(conv(x))`` with ``bn`` in eval mode (its running statistics):
    ``torch.nn.utils.fusion.fuse_conv_bn_eval`` on eval-mode copies, after checking that the pair
    can be folded. Plain, grouped, strided and dilated Conv1d/2d/3d, with or without bias; the
    inputs are not changed."""
    if not isinstance(conv, _CONVS):
        raise bad("conv", type(conv).__name__, "nn.Conv1d, nn.Conv2d, nn.Conv3d")
    if not isinstance(bn, _BATCHNORMS) or bn.running_mean is None or bn.running_var is None:
        raise bad("bn", type(bn).__name__, "a BatchNorm with running statistics (track_running_stats=True)",
                  "no running statistics to fold")
    if bn.num_features != conv.out_channels:
        raise bad("bn.num_features", bn.num_features, f"the conv's out_channels ({conv.out_channels})")
    return fuse_conv_bn_eval(copy.deepcopy(conv).eval(), copy.deepcopy(bn).eval())


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a conv folded
    into it, and how many were folded. ``model`` itself is not changed.

    The graph comes from ``torch.fx.symbolic_trace``, so a BN is folded only where the trace
    proves it safe: its input is a conv's output that nothing else reads, and that conv module is
    called once (a shared conv would change its other uses). Everything else runs as before.
    A model fx cannot trace raises ValueError (the caller skips this layout)."""
    import torch.fx as fx

    m = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(m)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ...) on untraceable code
        raise ValueError(f"fold_batchnorm: torch.fx cannot trace {type(model).__name__}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods[node.target], _BATCHNORMS):
            continue
        bn = mods[node.target]
        prev = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1
                and calls[prev.target] == 1):
            continue
        conv = mods[prev.target]
        if not isinstance(conv, _CONVS) or bn.running_mean is None or bn.num_features != conv.out_channels:
            continue
        parent, _, name = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, fold_conv_bn(conv, bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), folded


def inference_model(model: nn.Module, layout: str, device: torch.device | str, dtype: torch.dtype,
                    example: torch.Tensor) -> tuple[Callable[[torch.Tensor], Any], torch.Tensor]:
    """``model`` prepared to run in ``layout`` on ``device`` in ``dtype``, and ``example`` in the
    matching memory format. The caller's model is copied, never changed. Compiling (``+jit``,
    ``+compiled``) happens here, not on the first timed call. Raises ValueError when the layout
    does not apply to this model (the caller then skips it)."""
    check_layout(layout, "layout")
    fmt, _, graph = layout.partition("+")
    device = torch.device(device)
    x = example.to(device=device, dtype=dtype)
    if fmt == "channels_last":
        if x.dim() != 4:
            raise ValueError(f"channels_last needs a 4-D input (N, C, H, W); this one is {x.dim()}-D")
        x = x.contiguous(memory_format=torch.channels_last)
    if graph == "folded":
        # folded in the model's own precision, cast to ``dtype`` afterwards
        m, _ = fold_batchnorm(model)
    else:
        m = copy.deepcopy(model).eval()
    m = m.to(device=device, dtype=dtype)
    if fmt == "channels_last":
        m = m.to(memory_format=torch.channels_last)
    if graph == "jit":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")   # torch.jit is deprecated upstream and warns on every call
            try:
                traced = torch.jit.trace(m, x, check_trace=False)
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced)), x
            except Exception as e:   # tracing fails on data-dependent control flow, odd outputs, ...
                raise ValueError(f"torch.jit cannot trace/freeze {type(model).__name__}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if graph == "compiled":
        import torch._dynamo as dynamo

        compiled = torch.compile(m)
        # dense and compressed copies in every layout share one forward code object, and dynamo
        # silently runs eager past its recompile limit (8): raise it while this copy compiles.
        # Compile now, so compile time is never part of a timed run.
        with dynamo.config.patch(recompile_limit=max(64, dynamo.config.recompile_limit)), \
                torch.inference_mode():
            compiled(x)
        return compiled, x
    return m, x
