"""rankbench: a benchmark harness for low-rank compression of neural networks."""

__version__ = "0.1.0"
