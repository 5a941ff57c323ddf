"""rankbench: a benchmark harness for low-rank compression of neural networks."""

from bench.version import __version__

__all__ = ["__version__", "load_compressed"]


def __getattr__(name: str):
    # `bench.load_compressed(path)` without making `import bench` import torch (reports import
    # bench.row and stay torch-free)
    if name == "load_compressed":
        from bench.compressed import load_compressed

        return load_compressed
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
