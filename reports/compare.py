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

Without a REF (``AUTO``) each (dataset, model) gets its default references: the dense row (every
other group is compared with it: what compressing costs), and at each speed-up the best baseline
method there (every other group at that speed-up is compared with it: whether the method beats
the strongest competitor at equal cost). A group's speed-up is the target of its rank rule when
the rule names one (``speedup:2.0``: methods exported at a matched 2x share it), else its mean MAC
speed-up rounded to one decimal (``speedup_group``); the dense row's is 1x, where dense is the
reference. A baseline method is any method but the dense one and TRP (the method this benchmark
studies, ``STUDIED``); the best is the group with the highest mean top-1 over its seeds (ties:
the first by name). A speed-up where only TRP ran has no baseline reference.

May import: ``rankbench.bench.checks``, ``rankbench.bench.trial``, ``rankbench.reports.collate``,
``rankbench.reports.format``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from rankbench.bench.checks import UserError, bad
from rankbench.bench.trial import BASELINE
from rankbench.methods import lowrank
from rankbench.reports.collate import ok_trials, t_quantile_975
from rankbench.reports.format import latex_cell, latex_escape, markdown_cell

AUTO = "auto"          # --compare with no REF: the default references
STUDIED = frozenset({"trp"})   # the methods under study: never the "best baseline" reference
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


def speedup_group(g: pd.DataFrame) -> str:
    """A group's speed-up for the default references: its rank rule's target (``speedup:2.0`` ->
    ``2x``) when it names one, else its mean MAC speed-up to one decimal (``1.02`` -> ``1x``)."""
    targets = [t for t in map(_speedup_target, g["rule"] if "rule" in g else []) if t is not None]
    if targets:
        return f"{targets[0]:g}x"
    v = pd.to_numeric(g["macs_speedup"], errors="coerce").mean() if "macs_speedup" in g else math.nan
    return "?" if math.isnan(v) else f"{round(float(v), 1):g}x"


def _speedup_target(rule: Any) -> float | None:
    """The MAC speed-up a rank rule targets (``speedup:S``), read by the rules' one parser; None
    for any other rule or a cell that is not one."""
    try:
        r = lowrank.parse_rule(rule)
    except UserError:
        return None
    return r.value if r.kind == "speedup" else None


def _pair(base: pd.DataFrame, g: pd.DataFrame, metric: str) -> dict:
    """The paired difference of ``g`` to ``base`` over their common seeds."""
    ref, mine = base.set_index("seed")[metric], g.set_index("seed")[metric]
    seeds = sorted(set(ref.dropna().index) & set(mine.dropna().index))
    d = np.array([mine[s] - ref[s] for s in seeds], dtype=float)
    mean, lo, hi, blo, bhi = _interval(d) if len(d) else (math.nan, math.nan, math.nan, None, None)
    return {"n": len(seeds), "diff": mean, "t_lo": lo, "t_hi": hi, "boot_lo": blo, "boot_hi": bhi,
            "verdict": _verdict(len(seeds), lo, hi)}


def default_refs(groups: dict[tuple, pd.DataFrame], metric: str = "top1") -> list[tuple[tuple, str | None]]:
    """The default references of one (dataset, model): (group key, speed-up it is the reference
    at; None: every group) for the dense row and the best baseline method at each speed-up."""
    refs: list[tuple[tuple, str | None]] = [(k, None) for k in groups if k[2] == BASELINE]
    best: dict[str, tuple[float, tuple]] = {}
    for k, g in groups.items():
        if k[2] == BASELINE or k[2] in STUDIED:
            continue
        # rounded: rows are read in file order, and a mean's last bits follow its summation order,
        # so without it a tie would go to whichever files the folder listed first
        s, score = speedup_group(g), round(float(pd.to_numeric(g[metric], errors="coerce").mean()), 9)
        if s != "1x" and not math.isnan(score) and (s not in best or score > best[s][0]):
            best[s] = (score, k)
    return refs + [(k, s) for s, (_, k) in sorted(best.items())]


def paired(df: pd.DataFrame, ref: str | None, metric: str = "top1") -> pd.DataFrame:
    """One row per (group, reference) in each (dataset, model): the paired difference of
    ``metric`` to the reference over the common seeds. ``ref``: a group (every other group is
    compared with it), or None / ``AUTO`` for the default references (see the module's doc). A
    ``ref`` that names no group, or several in one (dataset, model), is refused in one line."""
    ok = ok_trials(df).copy()
    ok["variant"] = ok["variant"].fillna("")
    auto = ref in (None, AUTO)
    out = []
    for (dataset, model), block in ok.groupby(["dataset", "model"], sort=True):
        groups = {k: g for k, g in block.groupby(list(GROUP), sort=True)}
        if auto:
            refs = default_refs(groups, metric)
        else:
            refs = [(k, None) for k, g in groups.items() if _matches(g, ref)]
            if len(refs) > 1:
                raise bad("--compare", ref, "one of " + ", ".join(group_name(k[2], k[3]) for k, _ in refs),
                          f"names {len(refs)} groups of {dataset}/{model}")
        for rk, at in refs:
            for key, g in groups.items():
                if key == rk or (at is not None and speedup_group(g) != at):
                    continue
                out.append({"dataset": dataset, "model": model, "group": group_name(key[2], key[3]),
                            "ref": group_name(rk[2], rk[3]), "at": at or "", **_pair(groups[rk], g, metric)})
    if not out:
        names = sorted({group_name(m, v) for m, v in zip(ok["method"], ok["variant"])})
        if auto:
            raise bad("--compare", AUTO, "results with a dense row or a baseline method beside others",
                      "no default reference has a group to compare with")
        raise bad("--compare", ref, "a method, method[variant] or label of the rows: " + ", ".join(names),
                  "names no group")
    return pd.DataFrame(out)


def _pts(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"


def cells(table: pd.DataFrame, metric: str = "top1") -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of display strings and notes of a :func:`paired` table."""
    header = ["Dataset", "Model", "Method", "vs", "n", f"Δ {metric} (points)", "95% t interval", "95% bootstrap", ""]
    rows = []
    for r in table.itertuples():
        boot = "-" if _pts(r.boot_lo) == "-" else f"[{_pts(r.boot_lo)}, {_pts(r.boot_hi)}]"
        vs = f"{r.ref} (best baseline at {r.at})" if getattr(r, "at", "") else str(r.ref)
        rows.append([str(r.dataset), str(r.model), str(r.group), vs, str(r.n), _pts(r.diff),
                     f"[{_pts(r.t_lo)}, {_pts(r.t_hi)}]", boot, str(r.verdict)])
    notes = [f"Δ: mean over the seeds both ran of (method - reference) {metric}, paired by seed (same data "
             "split, same baseline seed).",
             "95% t interval: t distribution, n - 1 degrees of freedom; bootstrap: percentile, 10,000 "
             f"resamples, from n = {BOOTSTRAP_FROM} seeds.",
             "not distinguishable: the t interval holds 0; more seeds narrow it."]
    if "at" in table and (table["at"] != "").any():
        notes.append("best baseline at a speed-up: the non-TRP, non-dense method with the highest mean top-1 among "
                     "those at that speed-up (the rank rule's target, else the MAC speed-up to one decimal).")
    return header, rows, notes


def to_markdown(table: pd.DataFrame, metric: str = "top1") -> str:
    """The comparison as a Markdown table, with what its columns mean."""
    header, rows, notes = cells(table, metric)
    lines = ["| " + " | ".join(header) + " |", "|:--|:--|:--|:--|--:|--:|:--|:--|:--|"]
    lines += ["| " + " | ".join(markdown_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def to_latex(table: pd.DataFrame, metric: str = "top1") -> str:
    """The comparison as a booktabs table (``\\usepackage{booktabs}``), its notes below the tabular."""
    header, rows, notes = cells(table, metric)
    tex = lambda c: latex_cell(c).replace("Δ", r"$\Delta$")  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             f"\\caption{{Paired differences in {latex_escape(metric)} over common seeds, with 95\\% intervals.}}",
             r"\begin{tabular}{llllrrlll}", r"\toprule", " & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize\raggedright"]
    lines += [tex(n) + r"\par" for n in notes] + ["}", r"\end{table}"]
    return "\n".join(lines)


def render(table: pd.DataFrame, fmt: str, metric: str = "top1") -> str:
    """The comparison as ``md``, ``latex`` or ``csv`` (the raw numbers)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "latex":
        return to_latex(table, metric)
    return to_markdown(table, metric)
