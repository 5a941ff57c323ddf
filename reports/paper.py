"""Published tables beside ours: ``paper_diff(name, results_dirs)``.

Each ``reports/published/<name>.yaml`` holds one paper table: its rows' numbers, the source of
each row, which numbers were derived (and how), and a trial selector (method, model, dataset,
a subset of the method's params). A published row is matched to every group of our trials
(``collate.summarize``) that fits its selector; rows without results say "not run" and give the
command that produces them, rows of methods rankbench does not implement say "published only".
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from bench.checks import bad, check, is_number, missing, unknown
from reports.collate import load_results, summarize
from reports.format import DASH, display_name, fmt_pm, fmt_x, is_missing, latex_cell, latex_escape, markdown_cell

PUBLISHED_DIR = Path(__file__).parent / "published"
NUMBERS = ("top1", "top5", "speedup", "params_m")

DIFF_COLUMNS = (
    "label", "status", "scheme", "method", "variant", "n", "source", "derived", "command",
    "ours_top1", "ours_top1_ci95", "theirs_top1", "diff_top1",
    "ours_top5", "ours_top5_ci95", "theirs_top5", "diff_top5",
    "ours_speedup", "ours_speedup_ci95", "theirs_speedup", "diff_speedup",
    "ours_latency_speedup", "ours_params_m", "theirs_params_m",
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
    for key in ("name", "title", "dataset", "model", "spec", "sources", "rows"):
        if key not in table:
            raise missing(f"{path}: {key}", "a published table with name, title, dataset, model, "
                          "spec, sources and rows")
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
        for k in row.get("derived") or {}:
            check(f"{where}.derived", k, k in NUMBERS and row.get(k) is not None,
                  "a number this row gives: " + ", ".join(n for n in NUMBERS if row.get(n) is not None))
    return table


def command_for(table: dict[str, Any]) -> str:
    """The command that runs the trials a published table is compared with."""
    return f"rankbench run {table['spec']}"


# ---------------------------------------------------------------------------- matching

def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def same_value(a: Any, b: Any) -> bool:
    """Spec values compared the way a person means them: 3e-4 == 0.0003, "speedup:2" ==
    "speedup:2.0", and a YAML string "1e-4" (PyYAML reads it as text) == 0.0001."""
    if a == b:
        return True
    fa, fb = _num(a), _num(b)
    if fa is not None and fb is not None and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, str) and isinstance(b, str) and ":" in a and ":" in b:
        (ka, va), (kb, vb) = a.split(":", 1), b.split(":", 1)
        return ka.strip() == kb.strip() and same_value(va.strip(), vb.strip())
    return False


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
    return {f"theirs_{k}": (math.nan if row.get(k) is None else float(row[k])) for k in NUMBERS}


def paper_diff(name: str, results_dirs: str | Path | Sequence[str | Path] = ()) -> pd.DataFrame:
    """Published table ``name`` matched to our trials, one line per (published row, our group).

    Columns: ``DIFF_COLUMNS``. ``status`` is "ok", "failed" (trials exist, none succeeded),
    "not run" (with ``command``), "published only" (a method rankbench does not implement) or
    "ours only" (our groups of this model and dataset that no published row selects).
    Differences are ours minus theirs; ours is the mean over seeds, with its 95% CI half-width.
    """
    table = load_published(name)
    if isinstance(results_dirs, (str, Path)):
        results_dirs = [results_dirs]
    df = load_results(results_dirs) if results_dirs else pd.DataFrame()
    summary = summarize(df) if not df.empty else pd.DataFrame()
    failed = df[df["status"] != "ok"] if not df.empty else pd.DataFrame()
    used: set[int] = set()
    lines: list[dict[str, Any]] = []

    for row in table["rows"]:
        base = {
            "label": row["label"], "scheme": row.get("scheme"), "source": table["sources"][row["source"]],
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
            lines.append({**base, **_ours(summary.loc[i]), "status": "ok",
                          "variant": summary.loc[i, "variant"]})
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
                          "method": g["method"], "variant": g["variant"], **_ours(g)})

    out = pd.DataFrame(lines).reindex(columns=list(DIFF_COLUMNS))
    for k in ("top1", "top5", "speedup"):
        out[f"diff_{k}"] = [_diff(o, t if not is_missing(t) else None)
                            for o, t in zip(out[f"ours_{k}"], out[f"theirs_{k}"])]
    out.attrs["table"] = table
    return out


def _as_group(row: pd.Series) -> pd.Series:
    g = row.copy()
    if not isinstance(g.get("params"), dict):
        g["params"] = {}
    return g


def _ours(g: pd.Series) -> dict[str, Any]:
    return {
        "n": int(g["n"]),
        "ours_top1": g["top1_mean"], "ours_top1_ci95": g["top1_ci95"],
        "ours_top5": g["top5_mean"], "ours_top5_ci95": g["top5_ci95"],
        "ours_speedup": g["macs_speedup_mean"], "ours_speedup_ci95": g["macs_speedup_ci95"],
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
                 fmt_pm(r["ours_top1"], r["ours_top1_ci95"]),
                 _plain(r["theirs_top1"], derived="top1:" in der), _signed(r["diff_top1"])]
        if has_top5:
            cells += [fmt_pm(r["ours_top5"], r["ours_top5_ci95"]),
                      _plain(r["theirs_top5"], derived="top5:" in der), _signed(r["diff_top5"])]
        cells += [fmt_x(r["ours_speedup"], r["ours_speedup_ci95"]),
                  _plain(r["theirs_speedup"], suffix="x", derived="speedup:" in der),
                  _signed(r["diff_speedup"], "x"),
                  _plain(r["ours_params_m"], suffix="M"), _plain(r["theirs_params_m"], suffix="M"),
                  DASH if is_missing(r["n"]) else str(int(r["n"]))]
        rows.append(cells)
    notes = [
        "Ours: mean ± 95% CI half-width over seeds; Δ = ours - theirs.",
        "Speed-up ours: dense MACs / MACs of the model as run (fvcore: conv, linear, matmul; "
        "no BN); theirs: " + table.get("speedup_basis", "as published")
        + ". Ours also counts the final FC layer, so it reads slightly lower at equal conv cost.",
        "Sources: " + "; ".join(f"{k}: {v}" for k, v in table.get("sources", {}).items()),
    ]
    for _, r in diff.iterrows():
        if not is_missing(r["derived"]) and r["derived"]:
            notes.append(f"* {r['label']}: derived ({r['derived']})")
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
