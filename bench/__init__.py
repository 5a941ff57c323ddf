"""rankbench: a benchmark harness for low-rank compression of neural networks.

The harness, in rooms by concern (docs/CONTRACTS.md has the map): ``spec``, ``preflight``,
``train``, ``running``, ``results``, ``measure``, ``models``, ``data``, ``speed``; beside them the
modules every room uses (``checks``, ``version``, ``trial``) and the command line (``cli``).
May import: everything (this package and ``cli`` are the top).
"""

from rankbench.bench.version import __version__

__all__ = ["__version__", "load_compressed"]


def __getattr__(name: str):
    # `rankbench.bench.load_compressed(path)` without making `import rankbench.bench` import torch (reports import
    # rankbench.bench.results.row and stay torch-free)
    if name == "load_compressed":
        from rankbench.bench.results.compressed import load_compressed

        return load_compressed
    raise AttributeError(f"module 'rankbench.bench' has no attribute {name!r}")
