"""Published tables beside ours: ``paper_diff(name, results_dirs)``.

Each ``reports/published/<name>.yaml`` holds one paper table: its rows' numbers, the source of
each row (for a repository: the commit the numbers were read at), which numbers were derived
(and how), the basis of its speed-ups (``basis``: ``conv`` = conv layers only, ``model`` =
every layer fvcore counts) and a trial selector (method, model, dataset, a subset of the
method's params). A published row is matched to every group of our trials
(``collate.summarize``) that fits its selector, and diffed only when the group ran the recipe of
the table's spec (``rankbench.reports.recipe``) and deployed a compressed model; otherwise the row says
what differs and shows no delta. Rows without results say "not run" and give the command that
produces them, rows of methods rankbench does not implement say "published only".
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from rankbench.bench.checks import bad, check, is_int, is_number, missing, unknown
from rankbench.bench.trial import BASELINE
from rankbench.reports.collate import BOUNDS, load_results, summarize, t_quantile_975
from rankbench.reports.format import CLIPPED, DASH, display_name, fmt_ci, fmt_x, is_missing, latex_cell, latex_escape, markdown_cell
from rankbench.reports.recipe import paper_trials, recipe_differences, same_value

__all__ = ["available_papers", "command_for", "coverage_problem", "diff_cells", "format_paper_diff",
           "load_published", "matches", "paper_diff", "published_points", "same_value", "source_text"]

PUBLISHED_DIR = Path(__file__).parent / "published"
NUMBERS = ("top1", "top5", "speedup", "params_m")
# Optional spread of a published top-1: its standard deviation over top1_n runs. Where a row gives
# both (and ours has 2+ seeds), its top-1 difference gets a 95% Welch t interval.
SPREAD = ("top1_std", "top1_n")
BASES = ("conv", "model")
# The row key holding our speed-up on each basis (conv-only counts need rows that carry them).
BASIS_KEY = {"conv": "conv_macs_speedup", "model": "macs_speedup"}
BASIS_TEXT = {"conv": "conv layers only", "model": "whole model (fvcore: conv, linear, matmul; no BN)"}
SOURCE_KEYS = ("title", "venue", "arxiv", "url", "commit", "date", "quotes", "note")

DIFF_COLUMNS = (
    "label", "status", "scheme", "method", "variant", "n", "source", "note", "derived", "command",
    "ours_top1", "ours_top1_ci95", "theirs_top1", "diff_top1",
    "ours_top5", "ours_top5_ci95", "theirs_top5", "diff_top5",
    "ours_speedup", "ours_speedup_ci95", "ours_speedup_basis", "ours_built_speedup",
    "theirs_speedup", "diff_speedup",
    "ours_latency_speedup", "ours_params_m", "theirs_params_m",
    "ours_top1_std", "theirs_top1_std", "theirs_top1_n", "diff_top1_lo", "diff_top1_hi",
)


def available_papers() -> list[str]:
    """Names of the published tables in ``reports/published``."""
    return sorted(p.stem for p in PUBLISHED_DIR.glob("*.yaml"))


def load_published(name: str) -> dict[str, Any]:
    """The published table ``name``, checked: every row has a known source, numbers are numbers,
    and every "derived" note names one of the row's numbers."""
    path = PUBLISHED_DIR / f"{name}.yaml"
    if not path.is_file():
        raise unknown("paper", name, available_papers())
    table = yaml.safe_load(path.read_text())
    for key in ("name", "title", "dataset", "model", "spec", "basis", "sources", "rows"):
        if key not in table:
            raise missing(f"{path}: {key}", "a published table with name, title, dataset, model, "
                          "spec, basis, sources and rows")
    check(f"{path}: basis", table["basis"], table["basis"] in BASES, ", ".join(BASES))
    size = table.get("data_size")
    check(f"{path}: data_size", size, size is None or (isinstance(size, dict) and set(size) <= {"train", "val"}
          and all(is_int(v) and v > 0 for v in size.values())),
          "the full dataset's image counts, e.g. {train: 50000, val: 10000}")
    for key, src in table["sources"].items():
        if isinstance(src, dict):
            extra = sorted(set(src) - set(SOURCE_KEYS))
            check(f"{path}: sources.{key}", extra[0] if extra else None, not extra and "title" in src,
                  "a text, or a mapping with title and any of " + ", ".join(SOURCE_KEYS[1:]))
    for i, row in enumerate(table["rows"]):
        where = f"{path}: rows[{i}] ({row.get('label')!r})"
        if row.get("source") not in table["sources"]:
            raise unknown(f"{where}.source", row.get("source"), table["sources"])
        if ("match" in row) == ("published_only" in row):
            raise bad(where, sorted(k for k in ("match", "published_only") if k in row),
                      "exactly one of 'match' (a trial selector) or 'published_only'")
        for k in NUMBERS:
            v = row.get(k)
            check(f"{where}.{k}", v, v is None or is_number(v), "a number or null")
        check(f"{where}.top1_std", row.get("top1_std"), row.get("top1_std") is None
              or (is_number(row["top1_std"]) and row["top1_std"] >= 0 and is_int(row.get("top1_n"))
                  and row["top1_n"] >= 2), "null, or a standard deviation >= 0 with top1_n (runs, 2 or more)")
        for k in row.get("derived") or {}:
            check(f"{where}.derived", k, k in NUMBERS and row.get(k) is not None,
                  "a number this row gives: " + ", ".join(n for n in NUMBERS if row.get(n) is not None))
    return table


def command_for(table: dict[str, Any]) -> str:
    """The command that runs the trials a published table is compared with."""
    return f"rankbench run {table['spec']}"


def source_text(src: str | dict[str, Any]) -> str:
    """One line naming a source: its title, venue, arXiv id, address and commit."""
    if isinstance(src, str):
        return src
    parts = [str(src["title"])]
    parts += [str(src[k]) for k in ("venue",) if src.get(k)]
    if src.get("arxiv"):
        parts.append(f"arXiv {src['arxiv']}")
    if src.get("url"):
        parts.append(str(src["url"]))
    if src.get("commit"):
        parts.append(f"README at commit {str(src['commit'])[:7]}" + (f" ({src['date']})" if src.get("date") else ""))
    if src.get("quotes"):
        parts.append(f"quoting {src['quotes']}")
    text = ", ".join(parts)
    return text + (f"; {src['note']}" if src.get("note") else "")


def coverage_problem(name: str, df: pd.DataFrame) -> str | None:
    """One line when results hold no trial of the table's dataset and model (e.g. a digits run
    given ``--paper trp-cifar10-resnet20``); None when some trial fits, or there are no results."""
    if df is None or df.empty:
        return None
    table = load_published(name)
    datasets = {(r.get("match") or {}).get("dataset", table["dataset"]) for r in table["rows"]}
    models = {(r.get("match") or {}).get("model", table["model"]) for r in table["rows"]}
    fits = df["dataset"].isin(datasets) & df["model"].isin(models)
    if fits.any():
        return None
    have = sorted({f"{d}/{m}" for d, m in zip(df["dataset"], df["model"]) if d is not None})
    return (f"paper: {name}: these results hold {', '.join(have) or 'no dataset/model'}, the paper "
            f"table is {table['dataset']}/{table['model']}: nothing to compare; run `{command_for(table)}`")


# ---------------------------------------------------------------------------- matching

def matches(group: pd.Series, selector: dict[str, Any], table: dict[str, Any]) -> bool:
    """Whether one summarized group fits a published row's selector."""
    if group["method"] != selector["method"]:
        return False
    if group["model"] != selector.get("model", table["model"]):
        return False
    if group["dataset"] != selector.get("dataset", table["dataset"]):
        return False
    params = group.get("params") if isinstance(group.get("params"), dict) else {}
    return all(k in params and same_value(params[k], v) for k, v in (selector.get("params") or {}).items())


# ---------------------------------------------------------------------------- the diff

def _diff(ours: float, theirs: Any) -> float:
    if is_missing(ours) or theirs is None:
        return math.nan
    return float(ours) - float(theirs)


def _theirs(row: dict) -> dict[str, Any]:
    return {f"theirs_{k}": (math.nan if row.get(k) is None else float(row[k])) for k in (*NUMBERS, *SPREAD)}


def welch_interval(m1: float, s1: float, n1: float, m2: float, s2: float, n2: float) -> tuple[float, float]:
    """95% Welch t interval of ``m1 - m2`` from two means, standard deviations and counts (NaN
    ends when either side has fewer than 2 runs or no deviation)."""
    vals = (m1, s1, n1, m2, s2, n2)
    if any(is_missing(v) for v in vals) or n1 < 2 or n2 < 2:
        return math.nan, math.nan
    a, b = s1 * s1 / n1, s2 * s2 / n2
    if a + b == 0:
        return m1 - m2, m1 - m2
    dof = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    half = t_quantile_975(dof) * math.sqrt(a + b)
    return m1 - m2 - half, m1 - m2 + half


def paper_diff(name: str, results_dirs: str | Path | Sequence[str | Path] = ()) -> pd.DataFrame:
    """Published table ``name`` matched to our trials, one line per (published row, our group).

    Columns: ``DIFF_COLUMNS``. ``status`` is "ok" (diffed), "recipe differs: <what>" (ours ran
    another recipe than the table's spec: shown, not diffed), "not compressed" (the deployed
    model is the dense one: not diffed), "failed" (trials exist, none succeeded), "not run"
    (with ``command``), "published only" (a method rankbench does not implement) or "ours only"
    (our groups of this model and dataset that no published row selects). Differences are ours
    minus theirs; ours is the mean over seeds, with its 95% CI half-width. Speed-ups are diffed
    only on the table's basis (``ours_speedup_basis``).
    """
    table = load_published(name)
    paper = paper_trials(table["spec"])
    if isinstance(results_dirs, (str, Path)):
        results_dirs = [results_dirs]
    df = load_results(results_dirs) if results_dirs else pd.DataFrame()
    summary = summarize(df) if not df.empty else pd.DataFrame()
    failed = df[df["status"] != "ok"] if not df.empty else pd.DataFrame()
    used: set[int] = set()
    lines: list[dict[str, Any]] = []

    for row in table["rows"]:
        base = {
            "label": row["label"], "scheme": row.get("scheme"), "source": source_text(table["sources"][row["source"]]),
            "note": row.get("note"),
            "derived": "; ".join(f"{k}: {v}" for k, v in (row.get("derived") or {}).items()) or None,
            **_theirs(row),
        }
        if "published_only" in row:
            lines.append({**base, "status": "published only", "command": row["published_only"]})
            continue
        sel = row["match"]
        base["method"] = sel["method"]
        hits = [i for i, g in summary.iterrows() if matches(g, sel, table)] if not summary.empty else []
        if not hits:
            n_failed = sum(1 for _, f in failed.iterrows() if matches(_as_group(f), sel, table))
            status = f"failed ({n_failed} trial{'s' * (n_failed > 1)})" if n_failed else "not run"
            lines.append({**base, "status": status, "command": command_for(table), "n": 0})
            continue
        for i in hits:
            used.add(i)
            g = summary.loc[i]
            lines.append({**base, **_ours(g, table["basis"]), "status": _status(g, paper, sel, table.get("data_size")),
                          "variant": g["variant"]})
            if len(hits) > 1:  # several of our variants fit: say which line is which
                lines[-1]["label"] = f"{row['label']} [{summary.loc[i, 'variant']}]"

    # Our groups of this table's model and dataset that no row selects (e.g. SVD baselines at
    # TRP's speed-ups on CIFAR): shown so nothing we ran is hidden from the comparison.
    if not summary.empty:
        for i, g in summary.iterrows():
            if i in used or g["model"] != table["model"] or g["dataset"] != table["dataset"]:
                continue
            label = display_name(g) + (f" [{g['variant']}]" if g["variant"] else "")
            lines.append({"label": label, "status": "ours only", "scheme": g.get("scheme"),
                          "method": g["method"], "variant": g["variant"], **_ours(g, table["basis"])})

    out = pd.DataFrame(lines).reindex(columns=list(DIFF_COLUMNS))
    diffed = out["status"] == "ok"
    for k in ("top1", "top5", "speedup"):
        out[f"diff_{k}"] = [_diff(o, t if not is_missing(t) else None) if ok else math.nan
                            for o, t, ok in zip(out[f"ours_{k}"], out[f"theirs_{k}"], diffed)]
    # a speed-up on another basis than the paper's is shown, never diffed
    out.loc[out["ours_speedup_basis"] != table["basis"], "diff_speedup"] = math.nan
    ends = [welch_interval(o, so, n, t, st, nt) if ok else (math.nan, math.nan) for o, so, n, t, st, nt, ok in zip(
        out["ours_top1"], out["ours_top1_std"], out["n"], out["theirs_top1"], out["theirs_top1_std"],
        out["theirs_top1_n"], diffed)]
    out["diff_top1_lo"], out["diff_top1_hi"] = [e[0] for e in ends], [e[1] for e in ends]
    out.attrs["table"] = table
    return out


def _size_differences(g: pd.Series, size: dict[str, int] | None) -> list[str]:
    """``"train images 320 vs 50000"`` where a group's trials loaded another number of images
    than the full dataset the published numbers came from (a subset, or a partial copy)."""
    out = []
    for split, full in (size or {}).items():
        seen = g.get(f"{split}_images")
        seen = seen if isinstance(seen, list) else []
        wrong = [n for n in seen if n != full]
        if wrong:
            out.append(f"{split} images {', '.join(str(n) for n in wrong)} vs {full}")
    return out


def _status(g: pd.Series, paper: list[dict[str, Any]], selector: dict[str, Any],
            size: dict[str, int] | None = None) -> str:
    """"ok" when a group may be diffed against its published row; else what stops it."""
    specs = [s for s in (g.get("specs") if isinstance(g.get("specs"), list) else []) if isinstance(s, dict)]
    if not specs:
        return "recipe unknown: the rows carry no trial spec"
    found = recipe_differences(specs, paper, selector)
    if found is None:
        return "recipe unknown: the paper spec has no trial for this row"
    found = found + _size_differences(g, size)
    if not found and any(not g.get(f"{k}_images") for k in (size or {})):
        return "recipe unknown: the rows do not record how many images the dataset held"
    if found:
        return "recipe differs: " + "; ".join(found)
    k = g.get("n_uncompressed")
    if not is_missing(k) and k:
        return "not compressed: the deployed model is the dense one" if int(k) >= int(g["n"]) else (
            f"not compressed in {int(k)} of {int(g['n'])} seeds")
    return "ok"


def _as_group(row: pd.Series) -> pd.Series:
    g = row.copy()
    if not isinstance(g.get("params"), dict):
        g["params"] = {}
    return g


def _ours(g: pd.Series, basis: str) -> dict[str, Any]:
    key = BASIS_KEY[basis]
    # rows without conv-only counts fall back on the whole-model figure; the dense model's
    # speed-up is 1 on every basis
    if is_missing(g.get(f"{key}_mean")) and g["method"] != BASELINE:
        basis, key = "model", BASIS_KEY["model"]
    built = math.nan
    if basis == "conv" and not is_missing(g.get("claimed_conv_speedup_mean")):
        # on the paper's own formula (official TRP network decoupling counts stride-2 convs dense
        # though it factorizes them), with the conv count of the model as built beside it
        built, key = g[f"{key}_mean"], "claimed_conv_speedup"
    return {
        "ours_built_speedup": built,
        "n": int(g["n"]),
        "ours_top1": g["top1_mean"], "ours_top1_ci95": g["top1_ci95"], "ours_top1_std": g.get("top1_std", math.nan),
        "ours_top5": g["top5_mean"], "ours_top5_ci95": g["top5_ci95"],
        "ours_speedup": (g[f"{key}_mean"] if not is_missing(g.get(f"{key}_mean"))
                         else g["macs_speedup_mean"]),
        "ours_speedup_ci95": g.get(f"{key}_ci95", math.nan),
        "ours_speedup_basis": basis,
        "ours_latency_speedup": g["latency_speedup_mean"],
        "ours_params_m": g["params_count_mean"] / 1e6 if not is_missing(g["params_count_mean"]) else math.nan,
    }


# ---------------------------------------------------------------------------- printing

def _signed(v: float, suffix: str = "") -> str:
    return DASH if is_missing(v) else f"{v:+.2f}{suffix}"


def _plain(v: float, digits: int = 2, suffix: str = "", derived: bool = False) -> str:
    if is_missing(v):
        return DASH
    return f"{v:.{digits}f}{suffix}" + ("*" if derived else "")


def diff_cells(diff: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of display strings and notes of a ``paper_diff``."""
    table = diff.attrs.get("table", {})
    basis = table.get("basis", "model")
    has_top5 = diff["theirs_top5"].notna().any() or diff["ours_top5"].notna().any()
    header = ["Row", "Status", "Top-1 ours", "Top-1 theirs", "Δ Top-1"]
    if has_top5:
        header += ["Top-5 ours", "Top-5 theirs", "Δ Top-5"]
    header += ["Speed-up ours", "Speed-up theirs", "Δ Speed-up", "Params ours", "Params theirs", "Seeds"]
    rows = []
    for _, r in diff.iterrows():
        der = "" if is_missing(r["derived"]) else str(r["derived"])
        status = r["status"]
        if status == "not run" or status.startswith("failed"):
            status = f"{status}: `{r['command']}`"
        elif status == "published only":
            status = f"published only ({r['command']})"
        cells = [str(r["label"]), status,
                 fmt_ci(r["ours_top1"], r["ours_top1_ci95"], BOUNDS["top1"]),
                 _plain(r["theirs_top1"], derived="top1:" in der),
                 _signed(r["diff_top1"]) + ("" if is_missing(r["diff_top1_lo"]) else
                                            f" [{_signed(r['diff_top1_lo'])}, {_signed(r['diff_top1_hi'])}]")]
        if has_top5:
            cells += [fmt_ci(r["ours_top5"], r["ours_top5_ci95"], BOUNDS["top5"]),
                      _plain(r["theirs_top5"], derived="top5:" in der), _signed(r["diff_top5"])]
        ours_x = fmt_x(r["ours_speedup"], r["ours_speedup_ci95"])
        if ours_x != DASH and r["ours_speedup_basis"] != basis:
            ours_x += " (whole model)"
        elif ours_x != DASH and not is_missing(r["ours_built_speedup"]) and \
                abs(r["ours_built_speedup"] - r["ours_speedup"]) >= 0.005:
            ours_x += f" (built: {r['ours_built_speedup']:.2f}x)"
        cells += [ours_x,
                  _plain(r["theirs_speedup"], suffix="x", derived="speedup:" in der),
                  _signed(r["diff_speedup"], "x"),
                  _plain(r["ours_params_m"], suffix="M"), _plain(r["theirs_params_m"], suffix="M"),
                  DASH if is_missing(r["n"]) else str(int(r["n"]))]
        rows.append(cells)
    notes = [
        "Ours: mean ± 95% CI half-width (t distribution) over the n seeds in the Seeds column, clipped "
        f"to what the metric can take ({CLIPPED}: shown as [low, high]); Δ = ours - theirs, given only "
        "where status is ok: our trials ran the recipe of `" + str(table.get("spec")) + "` and deployed "
        "a compressed model.",
        f"Speed-up theirs: {table.get('speedup_basis', BASIS_TEXT.get(basis, basis))}. Speed-up ours: "
        f"dense MACs / MACs of the model as run, {BASIS_TEXT.get(basis, basis)}"
        + ("" if basis == "model" else " (fvcore restricted to conv layers)") + ".",
    ]
    if any("(built: " in c[header.index("Speed-up ours")] for c in rows):
        notes.append("(built: X): our speed-up is counted as the method's paper counts it (the official TRP "
                     "formula counts stride-2 convs as dense, though its network decoupling factorizes them, "
                     "where the factorized form costs more); X is the conv-only count of the model as built "
                     "and run.")
    if (diff["ours_speedup_basis"].notna() & (diff["ours_speedup_basis"] != basis)).any():
        notes.append("(whole model): these rows carry no conv-only MAC count (written before it was "
                     "recorded), so their speed-up is on another basis than the paper's and is not diffed.")
    if (diff["n"] == 2).any():
        notes.append("With n = 2 seeds a 95% t interval is 12.7 standard errors wide.")
    if diff["diff_top1_lo"].notna().any():
        notes.append("Δ Top-1 [low, high]: 95% Welch t interval of the difference of the two means, from our "
                     "seeds and the published standard deviation and run count; an interval that holds 0 "
                     "cannot tell the two apart.")
    if diff["theirs_top1_std"].isna().all():
        notes.append("Δ has no interval: the published table gives no standard deviation (one number per row), "
                     "so a Δ cannot be told from seed-to-seed noise; our ± is the interval of our seeds alone.")
    notes.append("Sources: " + "; ".join(f"{k}: {source_text(v)}" for k, v in table.get("sources", {}).items()))
    for _, r in diff.iterrows():
        if not is_missing(r["derived"]) and r["derived"]:
            notes.append(f"* {r['label']}: derived, not printed by the source ({r['derived']})")
    for _, r in diff.drop_duplicates("label").iterrows():
        if not is_missing(r["note"]) and r["note"]:
            notes.append(f"{r['label']}: {r['note']}")
    return header, rows, notes


def format_paper_diff(diff: pd.DataFrame, fmt: str = "md") -> str:
    """The diff as Markdown (default), LaTeX (booktabs) or CSV (raw numbers)."""
    if fmt == "csv":
        return diff.to_csv(index=False)
    header, rows, notes = diff_cells(diff)
    title = diff.attrs.get("table", {}).get("title", "")
    if fmt == "md":
        lines = [f"### {title}: published vs ours", "",
                 "| " + " | ".join(header) + " |",
                 "|" + "|".join(":--" if i < 2 else "--:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(markdown_cell(c) for c in r) + " |" for r in rows]
        return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    if fmt == "latex":
        spec = "ll" + "r" * (len(header) - 2)
        tex = lambda c: latex_cell(c.replace("`", "")).replace("Δ", r"$\Delta$")  # noqa: E731
        body = [" & ".join(tex(c) for c in r) + r" \\" for r in [header] + rows]
        return "\n".join([
            r"\begin{table}[t]", r"\centering", r"\small",
            f"\\caption{{{latex_escape(title)}: published vs ours. "
            + " ".join(tex(n) for n in notes) + "}",
            f"\\label{{tab:{diff.attrs.get('table', {}).get('name', 'paper')}}}",
            f"\\begin{{tabular}}{{{spec}}}", r"\toprule", body[0], r"\midrule", *body[1:],
            r"\bottomrule", r"\end{tabular}", r"\end{table}",
        ]) + "\n"
    raise unknown("format", fmt, ("md", "latex", "csv"))


def published_points(name: str) -> list[dict[str, Any]]:
    """The table's rows as plot points (``label``, ``top1``, ``speedup``, ``dataset``, ``model``)."""
    table = load_published(name)
    return [{"label": r["label"], "top1": r.get("top1"), "speedup": r.get("speedup"),
             "dataset": r.get("match", {}).get("dataset", table["dataset"]),
             "model": r.get("match", {}).get("model", table["model"])}
            for r in table["rows"]]
