"""Calibration: chosen layers' inputs and outputs on calibration batches of the training split,
handed to a collector (the data-driven decompositions, ``zhang`` and ``jaderberg``, accumulate
their statistics with it; their skeleton is ``rankbench.methods.svd.DataDriven``).

Statistics are gathered on the dense model (the original network's responses), in eval mode (no
BN update) and without gradients, in one pass over the calibration batches.

May import: nothing of the project (torch only).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

# called per chosen layer and calibration batch: (layer name, layer, its input, its output)
Collector = Callable[[str, nn.Module, Tensor, Tensor], None]


def collect(model: nn.Module, names: Sequence[str], batches: Sequence[tuple[Tensor, Tensor]],
            collector: Collector) -> None:
    """Run ``batches`` through ``model`` (eval mode, no grad) and hand every named layer's input
    and output to ``collector``; every module's train/eval mode is restored after."""
    modes = {m: m.training for m in model.modules()}
    hooks = []
    for name in names:
        def hook(mod: nn.Module, inp: tuple, out: Tensor, name: str = name) -> None:
            collector(name, mod, inp[0], out)
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    model.eval()
    try:
        p = next(model.parameters(), None)
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(p.device) if p is not None else x)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
