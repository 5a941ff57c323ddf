"""``python -m bench`` is the same as the ``rankbench`` command."""
import sys

from bench.cli import main

sys.exit(main())
