"""Checks that run before anything trains: the spec checks that build something (``model``: a
model on torch's meta device and one image through it, a method's parameters, the data), whether
a method compresses any layer of its model (``layers``), whether the cluster can ever run a
trial (``capacity``), and whether packed trials fit one GPU's memory (``memory``).

The error format they report in is ``rankbench.bench.checks`` (a leaf every room uses).
May import: the top-level modules, ``data``, ``models``, ``measure``, ``train``,
``rankbench.methods``. The spec parser and the runner import this room, never the reverse.
"""
