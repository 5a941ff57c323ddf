"""rankbench compression methods.

``methods.lowrank`` holds the shared low-rank building blocks (schemes, rank rules, factorized
layers, batched projection, whole-model decomposition); ``methods.base`` the ``Method`` API;
``methods.registry`` the name -> class registry (``register``, ``get_method``, ``available``,
``build``) with entry-point discovery (group ``rankbench.methods``). One module per method.
"""
from methods.base import Context, Method
from methods.registry import available, build, get_method, register

__all__ = ["Context", "Method", "available", "build", "get_method", "register"]
