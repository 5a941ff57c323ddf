"""``dense``: no compression; the baseline row every speed-up is measured against."""
from __future__ import annotations

from typing import Any

from methods.base import Method
from methods.registry import register


@register("dense")
class Dense(Method):
    """Trains and deploys the network as built."""

    def __init__(self) -> None:
        pass

    def report(self) -> dict[str, Any]:
        return {"layers": [], "skipped": []}
