"""Every row names the code that made it; an edited method re-runs its trials.

A plugin installed as a distribution (tests/procs.py's install) is run through `rankbench run`
twice, its source edited between the runs: the second run re-runs its trials (default), or with
`--keep-old-code` keeps them and says so; the rows name both code versions, and `rankbench
report` over rows of both marks the table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from procs import install

PLUGIN = '''
from rankbench.methods import Method


class Plain(Method):
    """Trains the network as built, like dense: a method whose code the test edits."""

    def __init__(self) -> None:
        pass
'''

SPEC = """
sweep: p
seeds: [0]
data: {name: digits}
model: mlp
train: {epochs: 1, batch_size: 64}
measure: {latency_repeats: 2}
methods: [plain]
"""


def _run(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "rankbench.bench", *args], cwd=site, env=env,
                          capture_output=True, text=True, timeout=300)


def _rows(results: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((results / "p" / "trials").glob("*.json"))]


def test_an_edited_plugin_reruns_its_trials_and_the_report_marks_the_mix(tmp_path):
    site = tmp_path / "site"
    install(site, "plainplug", PLUGIN, {"plain": "plainplug:Plain"})
    spec, results = site / "p.yaml", tmp_path / "results"
    spec.write_text(SPEC)
    first = _run(site, "run", str(spec), "--results", str(results))
    assert first.returncode == 0, first.stdout + first.stderr
    (row,) = _rows(results)
    old = row["code"]["method"]
    assert old["distribution"] == "plainplug" and old["version"] == "0.1" and old["module"] == "plainplug"
    assert row["code"]["rankbench"]["version"] and len(old["source_sha256"]) == 16

    init = site / "plainplug" / "__init__.py"
    init.write_text(init.read_text() + "\n# edited after the first run\n")

    # a second seed with the edited code, the first seed's row kept: the table mixes two versions
    keep = _run(site, "run", str(spec), "seeds=[0,1]", "--results", str(results), "--keep-old-code")
    assert keep.returncode == 0, keep.stdout + keep.stderr
    assert "made by other code of method 'plain'" in keep.stdout and "kept (--keep-old-code)" in keep.stdout
    assert "(1 were already done)" in keep.stdout, keep.stdout
    new = next(r for r in _rows(results) if r["seed"] == 1)["code"]["method"]
    assert new["source_sha256"] != old["source_sha256"]
    report = _run(site, "report", str(results), "--out", str(tmp_path / "tables"))
    assert report.returncode == 0, report.stdout + report.stderr
    note = [ln for ln in report.stdout.splitlines() if ln.startswith("note: the plain rows")]
    assert len(note) == 1 and "2 code versions" in note[0], report.stdout
    assert old["source_sha256"][:8] in note[0] and new["source_sha256"][:8] in note[0]

    # by default the old row's trial runs again: every row is the edited code's
    again = _run(site, "run", str(spec), "seeds=[0,1]", "--results", str(results))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "running it again" in again.stdout and "(1 were already done)" in again.stdout, again.stdout
    assert {r["code"]["method"]["source_sha256"] for r in _rows(results)} == {new["source_sha256"]}
    report = _run(site, "report", str(results), "--out", str(tmp_path / "tables"))
    assert "note: the plain rows" not in report.stdout
