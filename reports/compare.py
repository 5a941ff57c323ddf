"""Paired comparison of each method with a reference, over the seeds both ran.

Trials of one (dataset, model) and one seed share the data split and the baseline seed, so two
methods are compared seed by seed: the differences d_i = metric(method, seed i) - metric(REF, seed
i) over the common seeds, their mean, and a 95% interval: the t interval (n - 1 degrees of
freedom) always, and from n >= 5 seeds also a percentile bootstrap (10,000 resamples, seeded, so
the same rows give the same interval). Where the t interval holds 0, the two cannot be told
apart at that n, and the table says so instead of naming a winner.

``REF`` names a group as the table does: a method (``dense``), a method with its variant
(``svd[finetune_epochs=2,rule=speedup:2.0,scheme=channel]``) or a spec label; it must name one
group per (dataset, model).

May import: ``rankbench.bench.checks``, ``rankbench.reports.collate``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rankbench.bench.checks import bad
from rankbench.reports.collate import ok_trials, t_quantile_975

BOOTSTRAP_FROM = 5
RESAMPLES = 10_000
GROUP = ("dataset", "model", "method", "variant")


def group_name(method: str, variant: str) -> str:
    """How a group is named on the command line and in the table: ``method[variant]``."""
    return f"{method}[{variant}]" if variant else str(method)


def _matches(g: pd.DataFrame, ref: str) -> bool:
    method, variant = g["method"].iloc[0], g["variant"].iloc[0] or ""
    labels = {str(x) for x in g.get("label", pd.Series(dtype=object)).dropna()}
    return ref in (method, group_name(method, variant)) or ref in labels


def _interval(d: np.ndarray) -> tuple[float, float, float, float | None, float | None]:
    """(mean, t low, t high, bootstrap low, bootstrap high) of the differences ``d``."""
    n, mean = len(d), float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, None, None
    half = t_quantile_975(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    if n < BOOTSTRAP_FROM:
        return mean, mean - half, mean + half, None, None
    rng = np.random.default_rng(0)
    means = d[rng.integers(0, n, size=(RESAMPLES, n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return mean, mean - half, mean + half, float(lo), float(hi)


def _verdict(n: int, lo: float, hi: float) -> str:
    if n < 2 or math.isnan(lo):
        return f"no interval at n = {n}"
    if lo <= 0.0 <= hi:
        return f"not distinguishable at n = {n}"
    return "higher" if lo > 0 else "lower"


def paired(df: pd.DataFrame, ref: str, metric: str = "top1") -> pd.DataFrame:
    """One row per group other than ``ref`` in each (dataset, model): the paired difference of
    ``metric`` to ``ref`` over the common seeds. A ``ref`` that names no group, or several in one
    (dataset, model), is refused in one line."""
    ok = ok_trials(df).copy()
    ok["variant"] = ok["variant"].fillna("")
    out = []
    for (dataset, model), block in ok.groupby(["dataset", "model"], sort=True):
        groups = {k: g for k, g in block.groupby(list(GROUP), sort=True)}
        refs = [k for k, g in groups.items() if _matches(g, ref)]
        if not refs:
            continue
        if len(refs) > 1:
            raise bad("--compare", ref, "one of " + ", ".join(group_name(k[2], k[3]) for k in refs),
                      f"names {len(refs)} groups of {dataset}/{model}")
        base = groups[refs[0]].set_index("seed")[metric]
        for key, g in groups.items():
            if key == refs[0]:
                continue
            mine = g.set_index("seed")[metric]
            seeds = sorted(set(base.dropna().index) & set(mine.dropna().index))
            d = np.array([mine[s] - base[s] for s in seeds], dtype=float)
            mean, lo, hi, blo, bhi = _interval(d) if len(d) else (math.nan, math.nan, math.nan, None, None)
            out.append({"dataset": dataset, "model": model, "group": group_name(key[2], key[3]),
                        "ref": group_name(refs[0][2], refs[0][3]), "n": len(seeds), "diff": mean, "t_lo": lo,
                        "t_hi": hi, "boot_lo": blo, "boot_hi": bhi, "verdict": _verdict(len(seeds), lo, hi)})
    if not out:
        names = sorted({group_name(m, v) for m, v in zip(ok["method"], ok["variant"])})
        raise bad("--compare", ref, "a method, method[variant] or label of the rows: " + ", ".join(names),
                  "names no group")
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame, metric: str = "top1") -> str:
    """The comparison as a Markdown table, with what its columns mean."""
    def pts(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"

    lines = [f"| Dataset | Model | Method | vs | n | Δ {metric} (points) | 95% t interval | 95% bootstrap | |",
             "|:--|:--|:--|:--|--:|--:|:--|:--|:--|"]
    for r in table.itertuples():
        boot = f"[{pts(r.boot_lo)}, {pts(r.boot_hi)}]" if r.boot_lo is not None else "-"
        lines.append(f"| {r.dataset} | {r.model} | {r.group} | {r.ref} | {r.n} | {pts(r.diff)} | "
                     f"[{pts(r.t_lo)}, {pts(r.t_hi)}] | {boot} | {r.verdict} |")
    lines += ["", f"- Δ: mean over the seeds both ran of (method - reference) {metric}, paired by seed (same data "
              "split, same baseline seed).",
              "- 95% t interval: t distribution, n - 1 degrees of freedom; bootstrap: percentile, 10,000 "
              f"resamples, from n = {BOOTSTRAP_FROM} seeds.",
              "- not distinguishable: the t interval holds 0; more seeds narrow it."]
    return "\n".join(lines)
