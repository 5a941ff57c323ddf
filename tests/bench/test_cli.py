"""The command line as a user runs it (subprocesses): show, methods, and one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rankbench.bench.spec.shipped import shipped_specs

ROOT = Path(__file__).resolve().parents[2]


def rankbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH="", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "rankbench.bench", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_show_lists_the_default_specs_trials_without_running_them(tmp_path):
    r = rankbench("show", "--results", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("sweep quick") and "24 trials" in lines[0]
    rows = [ln for ln in lines[2:] if ln.strip()]
    assert len(rows) == 24 and all(" todo " in ln for ln in rows)
    assert sum(" dense " in ln for ln in rows) == 6
    assert not (tmp_path / "quick").exists()             # show writes nothing


def test_methods_lists_every_method_with_parameters_and_defaults():
    r = rankbench("methods")
    assert r.returncode == 0, r.stderr
    for name in ("dense", "svd", "trp", "arsvd", "deeptwist"):
        assert any(ln.startswith(f"{name}:") for ln in r.stdout.splitlines()), name
    assert "nuclear: float = 0.0" in r.stdout and "finetune_epochs: int = 0" in r.stdout


def test_bad_spec_exits_nonzero_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweep: t\nmethods: [{name: svd, rule: 'energy:1.5'}]\n")
    for cmd in (("show", str(bad)), ("run", str(bad), "--results", str(tmp_path / "res"))):
        r = rankbench(*cmd)
        assert r.returncode == 2
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "1.5" in err[0], r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "res").exists()              # rejected before any folder or Ray start


def test_missing_spec_file_and_bad_option_are_one_line_errors(tmp_path):
    r = rankbench("run", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and r.stderr.strip() == \
        f"error: spec: {str(tmp_path / 'nope.yaml')!r}: no such file; accepted: a path to a YAML spec or a shipped spec " \
        f"({', '.join(shipped_specs())})"
    r = rankbench("run", "--max-concurrent", "0", "--results", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --max-concurrent: 0")


def test_an_os_error_without_a_file_is_not_blamed_on_the_results_folder(monkeypatch, capsys):
    import rankbench.bench.cli as cli

    def broken(*a, **k):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(cli, "cmd_methods", broken)
    assert cli.main(["methods"]) == 2
    assert capsys.readouterr().err.strip() == "error: ConnectionResetError: [Errno 104] Connection reset by peer"


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path, monkeypatch, capsys):
    # what `rankbench show | head -1` does: the reader goes, the next write raises EPIPE
    import io
    import sys

    from rankbench.bench.cli import main

    class ClosedPipe(io.TextIOWrapper):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    sink = open(tmp_path / "stdout", "wb")
    monkeypatch.setattr(sys, "stdout", ClosedPipe(sink))
    assert main(["methods"]) == 0
    monkeypatch.undo()
    assert capsys.readouterr().err == ""                   # no "error: BrokenPipeError" line
