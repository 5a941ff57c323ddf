"""What a method author uses, built-in or plugin: the ``Method`` API and its report (``base``), the
name -> class registry with entry-point discovery (``registry``), the conformance suite every
method passes (``conformance``), and calibration batches through chosen layers for the
data-driven methods (``calibration``).

May import: ``rankbench.methods.lowrank``, ``rankbench.bench.checks``. The method modules import
this room, never the reverse (``conformance`` reaches them through the registry).
"""
