"""The README's "Use from Python" example runs as written."""
from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_the_use_from_python_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)        # noqa: S102 (the documentation's own code)
    out = capsys.readouterr().out
    assert "trp: top-1 " in out and "macs_speedup" in out
    model, row = scope["model"], scope["row"]
    assert row["status"] == "ok" and len(scope["df"]) == 1
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert (tmp_path / "results" / "py" / "trials" / f"{row['trial_id']}.model.pt").is_file()
