"""The networks rankbench compresses: the built-in ones by name (``builtin``) and any torchvision
or timm classifier (``zoo``).

May import: ``rankbench.bench.checks``, ``rankbench.methods.lowrank``.
"""
