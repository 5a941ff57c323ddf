"""The spec and its expansion into trials: YAML -> ``Sweep`` -> ``list[Trial]`` (``parse``),
dotted command-line overrides (``overrides``) and the specs shipped with the package
(``shipped``). The ``Trial`` itself is ``rankbench.bench.trial`` (every room passes it around).

May import: the top-level modules, ``data``, ``models``, ``measure``, ``train`` (the training
options' checks), ``preflight``, ``rankbench.methods``.
"""
