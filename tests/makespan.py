"""Makespan of `rankbench run docs/makespan.yaml`, code A against code B, in turns (A, B, A, B...).

    python tests/makespan.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 2]

Each run is a fresh results folder and a fresh local Ray on every core; the time is the whole
command's wall clock (Ray start included, alike for both) and the sweep's own "in Ns".
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = Path(__file__).resolve().parent.parent / "docs" / "makespan.yaml"


def one(code: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as res:
        env = dict(os.environ, PYTHONPATH=code)
        env.pop("RAY_ADDRESS", None)
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "rankbench.bench", "run", str(SPEC), "--results", res], cwd=code,
                           env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        m = re.search(r"(\d+) trials: (\d+) ok, (\d+) failed .* in (\d+)s", p.stdout)
        if p.returncode != 0 or not m or m.group(3) != "0":
            sys.exit(f"run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return wall, float(m.group(4)), bound(Path(res) / "makespan" / "trials")


def bound(trials: Path) -> str:
    """The critical-path bound from the rows' own wall times: no schedule on 2 workers beats the
    longest baseline + its dependent, nor the total work / 2."""
    import json

    rows = [json.loads(p.read_text()) for p in trials.glob("*.json")]
    wall = {r["trial_id"]: r["wall_s"] for r in rows}
    chains = [wall[r["trial_id"]] + wall.get(r.get("baseline_id") or "", 0.0) for r in rows]
    total = sum(wall.values())
    each = ", ".join(f"{r['method']}:{r['wall_s']:.0f}s" for r in rows)
    return (f"trials {each}; "
            f"bound max(longest chain {max(chains):.0f}s, work/2 {total / 2:.0f}s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    got: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(a.rounds):
        for name in ("old", "new"):
            wall, sweep_s, b = one(getattr(a, name))
            got[name].append(wall)
            print(f"round {r} {name}: {wall:.1f}s wall, sweep {sweep_s:.0f}s | {b}", flush=True)
    ratios = [o / n for o, n in zip(got["old"], got["new"])]
    print(f"old/new per round: {', '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    main()
