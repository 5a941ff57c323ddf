"""The people-facing columns of the accuracy/speed-up table: their ``--columns`` keys, the named
sets of them (``all``, ``paper``, ``compact``), picking them, and which cells are the best of their
column (set in bold by the ``paper`` preset). ``rankbench.reports.tables`` builds the cells.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from rankbench.bench.checks import bad, unknown
from rankbench.bench.trial import BASELINE
from rankbench.reports.format import sort_rows

# ``--columns``: one key per column of ``table_cells`` (the headers vary with the data: the
# latency setting, the cost unit), and named sets of them. Dataset and Model only ever appear
# when the table spans several (dataset, model) pairs, cost_total when a row reused a baseline.
COLUMN_KEYS = ("dataset", "model", "method", "scheme", "rule", "top1", "top5", "macs", "macs_speedup",
               "latency_speedup", "params", "cost", "cost_total", "seeds")
COLUMN_SETS: dict[str, tuple[str, ...]] = {
    "all": COLUMN_KEYS,
    # what a paper's results table usually shows: accuracy, counted and measured speed-up, size
    "paper": ("dataset", "model", "method", "top1", "top5", "macs_speedup", "latency_speedup", "params"),
    "compact": ("dataset", "model", "method", "top1", "macs_speedup"),
}
_HEADER_KEYS = {"Dataset": "dataset", "Model": "model", "Method": "method", "Scheme": "scheme",
                "Rank rule": "rule", "Top-1 (%)": "top1", "Top-5 (%)": "top5", "MACs": "macs",
                "MAC speed-up": "macs_speedup", "Params": "params", "Seeds": "seeds"}


def column_key(header: str) -> str:
    """The ``--columns`` key of a header of :func:`table_cells`."""
    if header in _HEADER_KEYS:
        return _HEADER_KEYS[header]
    if header.startswith("Measured speed-up"):
        return "latency_speedup"
    if header.endswith(", incl. baseline"):
        return "cost_total"   # beside the own cost when a row reused a trained baseline
    return "cost"     # GPU-hours, Wall time (CPU), Compression cost (", own" when cost_total is there)


def parse_columns(text: str | None) -> tuple[str, ...] | None:
    """``--columns``: a set name (``all``, ``paper``, ``compact``) or comma-separated keys of
    ``COLUMN_KEYS`` in the order wanted; None keeps every column."""
    if text is None:
        return None
    if text in COLUMN_SETS:
        return COLUMN_SETS[text]
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for k in keys or (text,):
        if k not in COLUMN_KEYS:
            raise unknown("--columns", k, [*COLUMN_SETS, *COLUMN_KEYS])
    return keys


def select_columns(header: list[str], rows: list[list[str]], columns: Sequence[str] | None
                   ) -> tuple[list[str], list[list[str]]]:
    """Keep the columns named in ``columns`` (keys of ``COLUMN_KEYS``), in that order; a key the
    table does not have (Dataset in a one-model table, Top-5 without top-5) is left out."""
    if columns is None:
        return header, rows
    where = {column_key(h): i for i, h in enumerate(header)}
    idx = [where[k] for k in columns if k in where]
    if not idx:
        raise bad("--columns", ",".join(columns), f"keys of the columns this table has: {', '.join(where)}",
                  "leaves no column of this table (dataset and model are columns only when the table "
                  "spans several datasets or models)")
    rows = [list(r) for r in rows]
    m = where.get("method")
    dropped = [where[k] for k in ("scheme", "rule") if k in where and k not in columns]
    if m is not None and m in idx and dropped:
        # rows that differ only in a dropped column (TRP+Nu channel / spatial) keep it in the name
        ident = [where[k] for k in ("dataset", "model") if k in where] + [m]
        groups: dict[tuple, list[int]] = {}
        for j, r in enumerate(rows):
            groups.setdefault(tuple(r[i] for i in ident), []).append(j)
        for members in groups.values():
            differ = [i for i in dropped if len({rows[j][i] for j in members}) > 1]
            for j in members if differ else []:
                extra = ", ".join(rows[j][i] for i in differ)
                name = rows[j][m]
                rows[j][m] = f"{name[:-1]}, {extra})" if name.endswith(")") else f"{name} ({extra})"
    return [header[i] for i in idx], [[r[i] for i in idx] for r in rows]


# The best value of a column: what the summary column is, whether higher is better, and the
# digits it is shown with (a tie at those digits is a tie: both are bold).
_BEST = {"top1": ("top1_mean", True, 2), "top5": ("top5_mean", True, 2),
         "macs_speedup": ("macs_speedup_mean", True, 2), "latency_speedup": ("latency_speedup_mean", True, 2),
         "macs": ("macs_mean", False, -3), "params": ("params_count_mean", False, -2)}


def best_cells(summary: pd.DataFrame, header: list[str]) -> set[tuple[int, int]]:
    """(row, column) of the cells to set in bold: per (dataset, model) and column of ``header``
    (as :func:`table_cells` gives it), the best value among the compressed methods (the dense
    baseline and rows that deployed the dense model are left out), where at least two compete."""
    s = sort_rows(summary)
    compressed = (s["method"] != BASELINE) & ~(s.get("n_uncompressed", pd.Series(0, index=s.index)).fillna(0)
                                                >= s["n"])
    out: set[tuple[int, int]] = set()
    for i, h in enumerate(header):
        if column_key(h) not in _BEST:
            continue
        col, higher, digits = _BEST[column_key(h)]
        if col not in s:
            continue
        for _, g in s[compressed & s[col].notna()].groupby(["dataset", "model"], sort=False):
            if len(g) < 2:
                continue
            vals = g[col].round(digits)
            best = vals.max() if higher else vals.min()
            out |= {(int(j), i) for j in g.index[vals == best]}
    return out
