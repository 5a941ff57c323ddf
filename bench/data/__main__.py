"""``python -m bench.data``: the input-pipeline probe and shard writer of ``bench.data.probe``."""
from bench.data.probe import main

if __name__ == "__main__":
    main()
