"""The exponential moving average (EMA) of a model's weights, as ``train.ema`` asks for it.

``EmaWeights(model, decay)`` copies the model's state (parameters and buffers) at the phase's
start; :meth:`EmaWeights.update` after every optimizer step makes each floating-point entry
``decay * ema + (1 - decay) * current`` (batch-norm running statistics are averaged too, as timm's
``ModelEmaV3`` does) and copies the others (``num_batches_tracked``). After ``k`` steps from
weights ``w_0`` that is ``decay**k * w_0 + (1 - decay) * sum_i decay**(k - i) * w_i``.
:meth:`EmaWeights.swapped_in` lends the averaged weights to the model for an evaluation;
:meth:`EmaWeights.copy_to` gives them to it for good (the end of a phase). No host sync.

May import: torch only.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


class EmaWeights:
    """The averaged state of one model, by its ``state_dict`` keys."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay {decay}: accepted: a number in (0, 1)")
        self.decay = float(decay)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # averaged: parameters and float buffers; copied: integer buffers (num_batches_tracked)
        self._floats = [k for k, v in self.state.items() if v.is_floating_point()]
        self._others = [k for k, v in self.state.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights (one batched call each
        for the averaged and the copied entries)."""
        now = model.state_dict()
        if self._floats:
            torch._foreach_lerp_([self.state[k] for k in self._floats], [now[k] for k in self._floats],
                                 1.0 - self.decay)
        if self._others:
            torch._foreach_copy_([self.state[k] for k in self._others], [now[k] for k in self._others])

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (in place: references to its tensors stay valid)."""
        model.load_state_dict(self.state)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holding the averaged weights inside the block, its own ones again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, Any]:
        """What the epoch checkpoint holds (tensors only: it is read back with ``weights_only``)."""
        return {"decay": self.decay, "state": self.state}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s average (onto this average's devices and memory layout)."""
        for k, v in d["state"].items():
            self.state[k].copy_(v)
