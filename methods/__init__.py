"""rankbench compression methods: one module per method, listed by this folder.

The machinery sits in two rooms: ``lowrank`` (the shared low-rank building blocks: rules, schemes,
factorized layers, MAC counting, layer choice, batched projection, whole-model and tensor
decompositions) and ``api`` (what a method author uses: the ``Method`` API, the registry with
entry-point discovery for plugins, the conformance suite, calibration). A plugin imports what it
needs from here: ``from rankbench.methods import Method, register, lowrank``. This package
imports the built-in methods, so their ``@register`` decorators have run once it is imported.

May import: ``rankbench.bench.checks`` (the error format), nothing else of the harness. Imports
run downwards: ``lowrank`` <- ``api`` <- each method <- this package.
"""
from rankbench.methods.api.base import Context, Method, MethodReport, check_param
from rankbench.methods.api.registry import available, build, get_method, register

from rankbench.methods import (arsvd, cp, deeptwist, dense, jaderberg, svd, svd_training, trp,  # noqa: E402,F401
                     tucker2, zhang)  # (built-ins register on import)

__all__ = ["Context", "Method", "MethodReport", "available", "build", "check_param", "get_method", "register"]
