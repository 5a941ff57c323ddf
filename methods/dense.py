"""``dense``: no compression; the baseline row every speed-up is measured against."""
from __future__ import annotations

from rankbench.methods.api.base import Method
from rankbench.methods.api.registry import register


@register("dense")
class Dense(Method):
    """Trains and deploys the network as built (every hook keeps its do-nothing default)."""

    is_baseline = True

    def __init__(self) -> None:
        pass
