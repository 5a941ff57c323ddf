"""The README's "Use from Python" example runs as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_block(section: str) -> str:
    text = README.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"README section {section!r} has no python block"
    return blocks[0]


def test_the_use_from_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)              # the example writes ./results
    ns: dict = {}
    exec(compile(_python_block("Use from Python"), "README.md", "exec"), ns)   # noqa: S102
    row, df = ns["row"], ns["df"]
    assert row["status"] == "ok", row.get("error")
    assert row["macs_speedup"] > 1.5 and row["label"] == "TRP"
    assert (tmp_path / "results" / "demo" / "trials" / f"{row['trial_id']}.json").exists()
    assert list(df["trial_id"]) == [row["trial_id"]] and df.loc[0, "label"] == "TRP"
    out = capsys.readouterr().out
    assert out.startswith("ok ") and "| TRP " in out
    import torch

    assert ns["model"](torch.zeros(2, 1, 8, 8)).shape == (2, 10) and not ns["model"].training
