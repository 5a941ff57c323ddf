"""Measuring a model as it is actually run: MACs (fvcore), parameters, latency, accuracy
(``metrics``), and the inference layouts latency is measured on (``inference``).

May import: ``rankbench.bench.checks``, ``rankbench.methods.lowrank``. Nothing else of the harness.
"""
