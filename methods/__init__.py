"""rankbench compression methods.

``methods.lowrank`` holds the shared low-rank building blocks (rules, schemes, factorized layers,
MAC counting, layer choice, batched projection, whole-model decomposition); ``methods.base`` the
``Method`` API; ``methods.registry`` the name -> class registry (``register``, ``get_method``,
``available``, ``build``) with entry-point discovery (group ``rankbench.methods``) for third-party
plugins. One module per method; this package imports the built-in ones, so their
``@register`` decorators have run once ``methods`` is imported.

Imports run downwards: ``lowrank`` <- ``base`` <- ``registry`` <- each method <- this package.
"""
from methods.base import Context, Method, MethodReport
from methods.registry import available, build, get_method, register

from methods import (arsvd, cp, deeptwist, dense, jaderberg, svd, svd_training, trp,  # noqa: E402,F401
                     tucker2, zhang)  # (built-ins register on import)

__all__ = ["Context", "Method", "MethodReport", "available", "build", "get_method", "register"]
