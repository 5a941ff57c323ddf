"""Bad input an adversarial review found, one class per test: each is refused with exit 2 and one
``error:`` line naming the field, before Ray starts, quickly and in bounded memory.

1. integers past Python's 4300-digit int-conversion limit (spec file, override, hex);
2. bad command-line flags of ``rankbench run`` (its forked child must report argparse's 2);
3. unbounded labels and field names in an error line (YAML alias bombs, huge keys);
4. a small spec whose grid expands to a million trials (counted before it is expanded).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rankbench.bench.cli import main

HEAD = "sweep: x\nseeds: [0]\ndata: {name: digits}\nmodel: mlp\n"
DIGITS = "9" * 100_000


def refused(argv: list[str], capsys: pytest.CaptureFixture, seconds: float = 20.0) -> str:
    """``main(argv)`` exits 2 within ``seconds`` with exactly one ``error:`` line: that line."""
    t0 = time.monotonic()
    code = main(argv)
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2, err[:2000]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[:2000]
    assert took < seconds, f"refused after {took:.1f}s"
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --- 1. integers with too many digits ------------------------------------------------------

@pytest.mark.parametrize("where", ["train: {epochs: %s}\nmethods: [dense]\n",
                                   "train: {epochs: 1}\nmethods: [{name: svd, rank: [1, %s]}]\n",
                                   "train: {epochs: 1}\nmethods: [dense]\n? %s\n: 1\n"],
                         ids=["train.epochs", "grid", "key"])
@pytest.mark.parametrize("number", [DIGITS, "-" + DIGITS, "1" + "_000" * 30_000, "0x" + "f" * 20_000,
                                    "0b" + "1" * 50_000], ids=["dec", "neg", "underscores", "hex", "bin"])
def test_an_integer_with_too_many_digits_in_a_spec_file(tmp_path, capsys, where, number):
    path = write(tmp_path, HEAD + where % number)
    line = refused(["show", path], capsys)
    assert line.startswith(f"error: yaml: {path!r}: line ") and "too many digits" in line, line
    assert len(line) < 2000


@pytest.mark.parametrize("override", ["train.epochs=" + DIGITS, "seeds=[0, " + DIGITS + "]",
                                      "train.epochs=0x" + "f" * 20_000], ids=["dec", "list", "hex"])
@pytest.mark.parametrize("cmd", ["show", "run"])
def test_an_integer_with_too_many_digits_in_an_override_names_its_field(tmp_path, capsys, override, cmd):
    path = write(tmp_path, HEAD + "train: {epochs: 1}\nmethods: [dense]\n")
    line = refused([cmd, path, override, "--results", str(tmp_path / "results")], capsys)
    field = override.partition("=")[0]
    assert line.startswith(f"error: {field}: ") and "too many digits" in line, line
    assert len(line) < 2000
    assert not (tmp_path / "results").exists()


# --- 2. bad flags of `rankbench run` exit 2, as argparse means them to ---------------------

@pytest.mark.parametrize("argv, words", [
    (["--max-concurrent", "abc"], ["argument --max-concurrent: invalid int value: 'abc'"]),
    (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (["quick", "--max-trials", "many"], ["argument --max-trials: invalid int value: 'many'"]),
])
def test_a_bad_flag_of_run_exits_2_with_argparses_message(tmp_path, argv, words):
    env = dict(os.environ, RANKBENCH_SUPERVISE="1", RAY_AUTH_MODE="disabled")   # the forked child, as typed
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "rankbench.bench", "run", *argv], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "usage: rankbench" in r.stderr and all(w in r.stderr for w in words), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()


# --- 3. every piece of an error line is capped -----------------------------------------------

def _bomb(levels: int = 6) -> str:
    """Nested anchors: level k is a list of ten level k-1 lists (the last holds 10**(levels + 1) strings)."""
    inner = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    inner += [f"&a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]" for k in range(1, levels + 1)]
    return "[" + ", ".join(inner) + "]"


BIG_KEY = "k" * 1_000_000
BOMBS = {
    # a method parameter whose one value is the bomb: the "[rule=...]" label of the error
    "param-value": "model: cnn\nmethods:\n  - name: svd\n    rule: [%s]\n" % _bomb(),
    # a grid axis whose points are parts of the bomb
    "param-grid": "model: cnn\nmethods:\n  - name: svd\n    rule: [%s, *a6]\n" % _bomb(),
    # a huge parameter name (the field of the error); "? KEY" is YAML's explicit key, which may be
    # longer than the 1024 characters of a plain one
    "param-name": f"model: cnn\nmethods:\n  - name: svd\n    ? {BIG_KEY}\n    : 1\n",
    "top-level-key": f"methods: [dense]\n? {BIG_KEY}\n: 1\n",
    "train-key": f"methods: [dense]\ntrain:\n  ? {BIG_KEY}\n  : 1\n",
    "model-option": f"methods: [dense]\nmodel:\n  name: mlp\n  ? {BIG_KEY}\n  : 1\n",
    "duplicate-key": f"methods: [dense]\ntrain:\n  ? {BIG_KEY}\n  : 1\n  ? {BIG_KEY}\n  : 2\n",
    "data-key": f"methods: [dense]\ndata:\n  name: digits\n  ? {BIG_KEY}\n  : 1\n",
    "resources-key": f"methods: [dense]\nresources:\n  ? {BIG_KEY}\n  : 1\n",
    "seeds": "methods: [dense]\nseeds: %s\n" % _bomb(),
    "model": "methods: [dense]\nmodel: [%s]\n" % _bomb(),
    "label": "methods: [{name: dense, label: %s}]\n" % _bomb(),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_an_error_line_is_short_however_big_the_input(tmp_path, capsys, case):
    text = BOMBS[case]
    head = "".join(line + "\n" for line in HEAD.splitlines()
                   if line.split(":")[0] not in {ln.split(":")[0] for ln in text.splitlines()})
    path = write(tmp_path, head + text)
    cmd = "run" if case == "data-key" else "show"      # show only warns about the data's options
    line = refused([cmd, path, "--results", str(tmp_path / "r")], capsys, seconds=10)
    assert len(line) < 2000, (len(line), line[:300])


def test_a_huge_override_key_or_index_is_capped_in_the_error(tmp_path, capsys):
    path = write(tmp_path, HEAD + "train: {epochs: 1}\nmethods: [dense]\n")
    for override in [f"train.{BIG_KEY}=1", f"methods.{'9' * 100_000}.rule=x", f"methods.5.rule={BIG_KEY}",
                     f"{BIG_KEY}.x=1", f"train.epochs=[{'1,' * 5_000}1]"]:
        line = refused(["show", path, override], capsys, seconds=10)
        assert len(line) < 2000, (len(line), line[:300])


# --- 4. a grid is counted before it is expanded ------------------------------------------------

def _grid_spec(seeds: int, rules: int, epochs: int) -> str:
    rule = ", ".join(f"energy:{(i + 1) / (rules + 1):.4f}" for i in range(rules))
    return (f"sweep: g\nseeds: {list(range(seeds))}\ndata: digits\nmodel: cnn\ntrain: {{epochs: 1}}\n"
            f"methods:\n  - name: svd\n    rule: [{rule}]\n    finetune_epochs: {list(range(epochs))}\n")


def test_a_spec_of_a_million_trials_is_refused_at_once_with_its_count(tmp_path):
    text = _grid_spec(100, 100, 100)
    assert len(text) < 2500          # a 2 KB spec
    path = write(tmp_path, text)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    for cmd in ("show", "run"):
        try:   # the timeout is the hang guard: before the count, the grid was still expanding after minutes
            r = subprocess.run([sys.executable, "-m", "rankbench.bench", cmd, path], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rankbench {cmd} still expanding the grid after 30 s")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert lines[0].startswith("error: methods: ") and "1000000 trials" in lines[0], lines[0]
        assert "--max-trials" in lines[0]
        assert not (tmp_path / "results").exists()


def test_max_trials_raises_or_lowers_the_limit_on_show_and_run(tmp_path, capsys):
    path = write(tmp_path, _grid_spec(2, 3, 2))   # 12 svd trials (+ 2 baselines, not counted)
    for cmd in ("show", "run"):
        line = refused([cmd, path, "--max-trials", "11", "--results", str(tmp_path / "r")], capsys)
        assert "12 trials" in line and "--max-trials" in line, line
        line = refused([cmd, path, "--max-trials", "0", "--results", str(tmp_path / "r")], capsys)
        assert line.startswith("error: --max-trials: 0"), line
    assert not (tmp_path / "r").exists()
    assert main(["show", path, "--max-trials", "12", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "14 trials" in out


def test_the_default_limit_counts_every_entry_data_model_and_seed(tmp_path, capsys):
    # just over the default limit of 10000: 11 seeds x 10 rules x 100 fine-tuning lengths
    line = refused(["show", write(tmp_path, _grid_spec(11, 10, 100))], capsys)
    assert "11000 trials" in line, line
    text = ("sweep: g\nseeds: [0, 1, 2, 3, 4]\ndata: [digits, digits]\nmodel: [cnn, mlp]\n"
            "methods:\n  - dense\n  - {name: svd, rule: [energy:0.5, energy:0.6], model: [cnn, cnn, cnn], "
            "data: digits, finetune_epochs: [0, 1, 2]}\n")
    line = refused(["show", write(tmp_path, text, "two.yaml"), "--max-trials", "100"], capsys)
    # dense: 2 data x 2 models x 5 seeds = 20; svd: 2 x 3 params, 3 models, 1 data, 5 seeds = 90
    assert "110 trials" in line, line
