"""``python -m rankbench.bench`` is the same as the ``rankbench`` command."""
import sys

from rankbench.bench.cli import main

sys.exit(main())
