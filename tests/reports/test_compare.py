"""Paired comparison with a reference: differences seed by seed, the t interval (and a bootstrap
from 5 seeds), and "not distinguishable" where the interval holds 0. Checked on fixed rows, where
the numbers are exact."""
from __future__ import annotations

import math

import pytest

from rankbench.bench.checks import UserError
from rankbench.reports import compare
from rankbench.reports.cli import main_report
from rankbench.reports.collate import load_results
from rows import make_row, write_rows


def _rows(tmp_path, ref: list[float], other: list[float], method: str = "trp"):
    rows = [make_row(method="svd", seed=s, top1=v, params={"rule": "speedup:2.0"}) for s, v in enumerate(ref)]
    rows += [make_row(method=method, seed=s, top1=v) for s, v in enumerate(other)]
    return load_results(write_rows(tmp_path, rows))


def test_the_paired_difference_is_the_mean_of_the_per_seed_differences_with_a_t_interval(tmp_path):
    df = _rows(tmp_path, [90.0, 91.0, 92.0], [91.0, 92.2, 92.8])       # differences 1.0, 1.2, 0.8
    (r,) = compare.paired(df, "svd").itertuples()
    assert (r.group, r.ref, r.n) == ("trp", "svd[rule=speedup:2.0]", 3)
    assert r.diff == pytest.approx(1.0)
    half = 4.302652729911275 * 0.2 / math.sqrt(3)                       # t(0.975, 2) x sd / sqrt(n)
    assert (r.t_lo, r.t_hi) == (pytest.approx(1.0 - half), pytest.approx(1.0 + half))
    assert r.verdict == "higher" and r.boot_lo is None


def test_an_interval_that_holds_zero_says_the_two_cannot_be_told_apart(tmp_path):
    df = _rows(tmp_path, [90.0, 91.0, 92.0], [92.0, 90.0, 91.5])       # differences +2, -1, -0.5
    (r,) = compare.paired(df, "svd[rule=speedup:2.0]").itertuples()
    assert r.t_lo < 0 < r.t_hi and r.verdict == "not distinguishable at n = 3"


def test_only_common_seeds_are_paired_and_five_seeds_add_a_bootstrap(tmp_path):
    df = _rows(tmp_path, [90.0, 91.0, 92.0, 93.0, 94.0, 95.0], [91.0, 92.0, 93.5, 94.0, 95.0])
    (r,) = compare.paired(df, "svd").itertuples()
    assert r.n == 5 and r.boot_lo is not None and r.boot_lo <= r.diff <= r.boot_hi
    again = compare.paired(df, "svd").iloc[0]
    assert (again.boot_lo, again.boot_hi) == (r.boot_lo, r.boot_hi)    # seeded: the same rows, the same interval


def test_a_reference_that_names_no_group_is_refused_with_the_choices(tmp_path):
    df = _rows(tmp_path, [90.0, 91.0], [91.0, 92.0])
    with pytest.raises(UserError, match=r"--compare: 'tucker2': names no group; accepted: .*svd\[rule=speedup:2.0\], trp"):
        compare.paired(df, "tucker2")


def test_report_compare_prints_and_writes_the_table(tmp_path, capsys):
    _rows(tmp_path / "r", [90.0, 91.0, 92.0], [91.0, 92.5, 92.5])
    assert main_report([str(tmp_path / "r"), "--compare", "svd", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "paired comparison with svd:" in out and "| cifar10 | resnet20 | trp | svd[rule=speedup:2.0] | 3 | +1.00 |" in out
    assert (tmp_path / "out" / "compare.md").read_text().startswith("| Dataset | Model | Method | vs |")
    assert main_report([str(tmp_path / "r"), "--compare", "nope", "--out", str(tmp_path / "out")]) == 2
