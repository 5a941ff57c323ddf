"""``dense``: no compression; the baseline row every speed-up is measured against."""
from __future__ import annotations

from methods.base import Method
from methods.registry import register


@register("dense")
class Dense(Method):
    """Trains and deploys the network as built (every hook keeps its do-nothing default)."""

    name = "dense"

    def __init__(self) -> None:
        pass
