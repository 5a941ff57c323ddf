"""``python -m rankbench.bench.data``: the input-pipeline probe and shard writer of ``rankbench.bench.data.probe``."""
from rankbench.bench.data.probe import main

if __name__ == "__main__":
    main()
