"""The accuracy-vs-speed-up table in Markdown, LaTeX (booktabs) and CSV.

Input is ``collate.summarize``'s grouped view. Markdown and LaTeX are for people and follow
paper conventions (``90.50 ± 0.21``, ``2.17x``, ``40.6M``); CSV is for machines and keeps the
raw numbers (mean, std, CI half-width, n) in separate columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from rankbench.bench.checks import bad, unknown
from rankbench.reports.collate import BOUNDS, failed_trials, load_results, summarize
from rankbench.reports.format import (CLIPPED, COLUMN_PARAMS, DASH, display_name, fix_counts, fmt_ci, fmt_duration, fmt_si,
                            fmt_x, is_missing, latex_cell, latex_escape, markdown_cell, one_line, sort_rows)

# Appended to the method of a row whose deployed model is the dense one (MACs = dense MACs):
# the method ran, but compressed nothing, so its accuracy is the dense model's.
NOT_COMPRESSED = "[not compressed]"

FORMATS = ("md", "latex", "csv")
SUFFIX = {"md": "md", "latex": "tex", "csv": "csv"}


# ---------------------------------------------------------------------------- table contents

def _params_of(row: pd.Series) -> dict:
    p = row.get("params")
    return p if isinstance(p, dict) else {}


def _varying_params(summary: pd.DataFrame) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """Per method: the parameter names whose values differ between its rows (these go into
    the method label) and the ones that are constant (these go into a note)."""
    varying: dict[str, list[str]] = {}
    constant: dict[str, dict] = {}
    names = summary.apply(display_name, axis=1) if len(summary) else summary["method"]
    for method, g in summary.groupby(names, sort=True):   # per display name (the spec's label, else method)
        plist = [_params_of(r) for _, r in g.iterrows()]
        keys = sorted({k for p in plist for k in p} - COLUMN_PARAMS)
        var, const = [], {}
        for k in keys:
            vals = {repr(p.get(k)) for p in plist}
            if len(vals) > 1:
                var.append(k)
            else:
                const[k] = plist[0].get(k)
        varying[str(method)] = var
        constant[str(method)] = const
    return varying, constant


def _method_label(row: pd.Series, varying: dict[str, list[str]]) -> str:
    p = _params_of(row)
    name = display_name(row)
    keys = varying.get(name, [])
    extra = ", ".join(f"{k}={p.get(k)}" for k in keys)
    label = f"{name} ({extra})" if extra else name
    return label + uncompressed_mark(row)


def uncompressed_mark(row: pd.Series) -> str:
    """`` [not compressed]`` when every seed of a compressing method deployed the dense model,
    `` [not compressed: k of n seeds]`` when some did; "" otherwise."""
    k = row.get("n_uncompressed")
    if is_missing(k) or not k:
        return ""
    n = int(row["n"])
    return f" {NOT_COMPRESSED}" if int(k) >= n else f" [not compressed: {int(k)} of {n} seeds]"


def _layout_note(s: pd.DataFrame) -> str:
    """What the latency layouts were: the spec's ``measure.latency_layout`` ("auto": each model
    on its fastest of the device's menu; one layout: both timed on it; a list: fastest of those)."""
    # a group whose seeds were timed under different settings joins them with "/"
    settings = {x for v in s.get("latency_layout_setting", pd.Series(dtype=object))
                if not is_missing(v) and v for x in str(v).split("/")}
    if not settings or settings == {"auto"}:
        return ("Latency: dense and compressed timed on the same menu of inference layouts (memory "
                "format, BN folded, jit), each on its fastest; results.csv names the winners.")
    parts = []
    for v in sorted(settings):
        if v == "auto":
            parts.append("each on its fastest layout of the device's menu")
        elif "," in v:
            parts.append(f"each on its fastest of the layouts the spec listed ({v})")
        else:
            parts.append(f"both on the layout the spec fixed ({v})")
    return ("Latency: dense and compressed timed " + "; in other rows ".join(parts)
            + "; results.csv names each row's layouts.")


def _latency_setting(row: pd.Series) -> str:
    parts = [row.get("latency_device"), row.get("latency_dtype")]
    b = row.get("latency_batch")
    parts.append(f"batch {b}" if not is_missing(b) and b is not None else None)
    return fix_counts(", ".join(str(p) for p in parts if p and not is_missing(p)))


def _reuses_baseline(s: pd.DataFrame) -> bool:
    """Whether some row's own cost leaves out a baseline's training it reused."""
    if "wall_s_total_mean" not in s:
        return False
    own, total = s["wall_s_mean"], s["wall_s_total_mean"]
    return bool(((total - own).abs() > 1e-9).any() or (own.notna() & total.isna()).any())


def _cost_cell(cost: str, gpu_h: float | None, wall: float | None) -> str:
    if cost == "gpu":
        return DASH if is_missing(gpu_h) else f"{gpu_h:.2f}"
    if cost == "cpu":
        return fmt_duration(wall)
    return f"{gpu_h:.2f} GPU-h" if not is_missing(gpu_h) and gpu_h > 0 else f"{fmt_duration(wall)} CPU"


def _cost_mode(summary: pd.DataFrame) -> str:
    """"gpu" when every row spent GPU time, "cpu" when none did, "mixed" otherwise."""
    on_gpu = [(not is_missing(v)) and v > 0 for v in summary["gpu_hours_mean"]]
    if all(on_gpu):
        return "gpu"
    if not any(on_gpu):
        return "cpu"
    return "mixed"


@dataclass(frozen=True)
class _Shape:
    """What the rows decide about the table's columns, shared by its header, cells and notes."""
    multi: bool                 # several (dataset, model) pairs: Dataset and Model columns
    has_top5: bool
    lat_setting: set[str]       # the rows' latency settings (device, dtype, batch), "" left out
    lat_uniform: bool           # one setting at most: in the header, not in each cell
    cost: str                   # see _cost_mode
    with_base: bool             # see _reuses_baseline: an own and an incl. baseline cost column


def _shape(s: pd.DataFrame) -> _Shape:
    """The table's columns and their units, decided once from all of its rows."""
    lat_setting = {_latency_setting(r) for _, r in s.iterrows()} - {""}
    return _Shape(
        multi=s[["dataset", "model"]].drop_duplicates().shape[0] > 1,
        has_top5="top5_mean" in s and s["top5_mean"].notna().any(),
        lat_setting=lat_setting,
        lat_uniform=len(lat_setting) <= 1,
        cost=_cost_mode(s),
        # a method that starts from the trained dense baseline (svd) does not pay for that training
        # in its own cost: show the cost with the baseline's training beside it, so rows compare
        with_base=_reuses_baseline(s),
    )


def _header(shape: _Shape) -> list[str]:
    """The column headers, one per cell of :func:`_row_cells`."""
    header = (["Dataset", "Model"] if shape.multi else []) + ["Method", "Scheme", "Rank rule", "Top-1 (%)"]
    if shape.has_top5:
        header.append("Top-5 (%)")
    lat_head = "Measured speed-up"
    if shape.lat_uniform and shape.lat_setting:
        lat_head += f" ({next(iter(shape.lat_setting))})"
    cost_head = {"gpu": "GPU-hours", "cpu": "Wall time (CPU)", "mixed": "Compression cost"}[shape.cost]
    header += ["MACs", "MAC speed-up", lat_head, "Params", cost_head + (", own" if shape.with_base else "")]
    if shape.with_base:
        header.append(cost_head + ", incl. baseline")
    header.append("Seeds")
    return header


def _row_cells(r: pd.Series, varying: dict[str, list[str]], shape: _Shape) -> list[str]:
    """One summary row as display strings, in the order of :func:`_header`."""
    row = ([str(r["dataset"]), str(r["model"])] if shape.multi else [])
    row += [
        _method_label(r, varying),
        DASH if is_missing(r.get("scheme")) else str(r["scheme"]),
        DASH if is_missing(r.get("rule")) else str(r["rule"]),
        fmt_ci(r["top1_mean"], r["top1_ci95"], BOUNDS["top1"]),
    ]
    if shape.has_top5:
        row.append(fmt_ci(r["top5_mean"], r["top5_ci95"], BOUNDS["top5"]))
    lat = fmt_x(r["latency_speedup_mean"], r["latency_speedup_ci95"])
    if not shape.lat_uniform and lat != DASH:
        lat += f" ({_latency_setting(r)})"
    cost_cells = [_cost_cell(shape.cost, r["gpu_hours_mean"], r["wall_s_mean"])]
    if shape.with_base:
        cost_cells.append(_cost_cell(shape.cost, r.get("gpu_hours_total_mean"), r.get("wall_s_total_mean")))
    seeds = str(int(r["n"]))
    if r.get("n_failed", 0):
        seeds += f" (+{int(r['n_failed'])} failed)"
    row += [
        fmt_si(r["macs_mean"]),
        fmt_x(r["macs_speedup_mean"], r["macs_speedup_ci95"]),
        lat,
        fmt_si(r["params_count_mean"]),
        *cost_cells,
        seeds,
    ]
    return row


def _convention_notes(s: pd.DataFrame, shape: _Shape) -> list[str]:
    """Notes that say what each number of the table means: its interval, MAC count, latency, cost."""
    notes = [
        "Top-1/Top-5: mean ± 95% CI half-width (t distribution) over the n seeds in the Seeds column; "
        "no ± with one seed.",
        "MACs per image (one multiply-add = one MAC, fvcore count of the model actually run); "
        "MAC speed-up = dense MACs / MACs.",
    ]
    if shape.lat_setting:
        notes.append("Measured speed-up = dense median latency / median latency"
                     + (f" on {next(iter(shape.lat_setting))}." if shape.lat_uniform else ", setting per cell."))
        if "latency_layout" in s and s["latency_layout"].notna().any():
            notes.append(_layout_note(s))
    what = {"cpu": "Compression cost is wall time on CPU (no GPU was used)",
            "gpu": "Compression cost in GPU-hours",
            "mixed": "Compression cost: GPU-hours where a GPU was used, else CPU wall time"}[shape.cost]
    if shape.with_base:
        notes.append(what + "; own: the trial's training + compression + fine-tuning (a method that "
                     "starts from the trained dense baseline does not train it); incl. baseline: "
                     "own plus that baseline's training (- when its row is not in the results).")
    else:
        notes.append(what + ": training + compression + fine-tuning.")
    return notes


def _caveat_notes(s: pd.DataFrame, rows: list[list[str]], constant: dict[str, dict]) -> list[str]:
    """Notes that only some tables need: clipped or wide intervals, uncompressed models, the
    parameters a method kept constant, and rows that merge different specs."""
    notes = []
    if any(c.endswith(CLIPPED) or f"{CLIPPED} " in c for row in rows for c in row):
        notes.append(f"{CLIPPED} The 95% interval reaches past what the metric can take; shown as "
                     "[low, high], clipped to it (0-100 for accuracies, > 0 for speed-ups).")
    if (s["n"] == 2).any():
        notes.append("With n = 2 seeds a 95% t interval is 12.7 standard errors wide: "
                     "such an interval says little; run more seeds to narrow it.")
    if "n_uncompressed" in s and (s["n_uncompressed"].fillna(0) > 0).any():
        notes.append(f"{NOT_COMPRESSED}: the deployed model is the dense one (MACs = dense MACs): "
                     "the method selected no layer or kept every rank; its accuracy is the dense model's.")
    for m, const in constant.items():
        if const:
            notes.append(f"{m}: " + ", ".join(f"{k}={v}" for k, v in const.items()))
    if "mixed_recipes" in s and s["mixed_recipes"].any():
        notes.append("Warning: some rows merge seeds trained with different specs "
                     "(results from several sweeps); compare them with care.")
    return notes


def table_cells(summary: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of display strings and notes for the people-facing formats."""
    s = sort_rows(summary)
    varying, constant = _varying_params(s)
    shape = _shape(s)
    rows = [_row_cells(r, varying, shape) for _, r in s.iterrows()]
    notes = _convention_notes(s, shape) + _caveat_notes(s, rows, constant)
    return _header(shape), rows, notes


# ---------------------------------------------------------------------------- column sets

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


# ---------------------------------------------------------------------------- renderers

def to_markdown(summary: pd.DataFrame, title: str | None = None, columns: Sequence[str] | None = None) -> str:
    """A Markdown table with its notes as a list below it (what ``rankbench run`` prints);
    ``columns``: keys of ``COLUMN_KEYS`` to keep (see :func:`parse_columns`)."""
    if summary.empty:
        return "(no successful trials)\n"
    header, rows, notes = table_cells(summary)
    header, rows = select_columns(header, rows, columns)
    cells = [[markdown_cell(c) for c in r] for r in rows]     # escaped first: widths are of what is printed
    widths = [max(len(markdown_cell(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    text_cols = {"Dataset", "Model", "Method", "Scheme", "Rank rule"}
    lines = []
    if title:
        lines += [f"### {one_line(title)}", ""]
    lines.append("| " + " | ".join(markdown_cell(h).ljust(w) for h, w in zip(header, widths)) + " |")
    lines.append("|" + "|".join(
        (":" + "-" * (w + 1)) if h in text_cols else ("-" * (w + 1) + ":")
        for h, w in zip(header, widths)) + "|")
    for r in cells:
        lines.append("| " + " | ".join(
            c.ljust(w) if h in text_cols else c.rjust(w) for c, h, w in zip(r, header, widths)) + " |")
    lines.append("")
    lines += [f"- {one_line(n)}" for n in notes]
    return "\n".join(lines) + "\n"


def latex_label(summary: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A ``\\label`` name unique to the table: its (dataset, model) pairs and a short hash of its
    rows and columns, so two tables of one paper never share a label."""
    import hashlib
    import re

    if summary.empty:
        return "tab:rankbench-empty"
    keys = sorted({tuple(str(r.get(k)) for k in ("dataset", "model", "method", "variant"))
                   for _, r in summary.iterrows()})
    digest = hashlib.sha256(repr((keys, tuple(columns or ()))).encode()).hexdigest()[:6]
    pairs = sorted({f"{d}-{m}" for d, m, _, _ in keys})
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", pairs[0] if len(pairs) == 1 else f"{len(pairs)}models").strip("-")
    return f"tab:rankbench-{slug}-{digest}"


def to_latex(summary: pd.DataFrame, caption: str = "Accuracy versus speed-up.",
             label: str | None = None, columns: Sequence[str] | None = None) -> str:
    """A booktabs ``table`` environment; needs ``\\usepackage{booktabs}``. The caption is the
    one sentence given; the notes (CI, MAC convention, latency setting, cost) follow the
    tabular as a footnote-size paragraph. ``label``: default :func:`latex_label`, unique to
    the table. ``columns``: keys of ``COLUMN_KEYS`` to keep."""
    if summary.empty:
        header, rows, notes = ["Method"], [], ["no successful trials"]
    else:
        header, rows, notes = table_cells(summary)
        header, rows = select_columns(header, rows, columns)
        # the latency setting is in the notes; a narrow header keeps the table printable
        header = ["Measured speed-up" if h.startswith("Measured speed-up") else h for h in header]
    label = label or latex_label(summary, columns)
    text_cols = {"Dataset", "Model", "Method", "Scheme", "Rank rule"}
    spec = "".join("l" if h in text_cols else "r" for h in header)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        f"\\caption{{{latex_escape(caption)}}}",
        f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_cell(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_cell(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines += [r"\par\smallskip", r"{\footnotesize\raggedright"]
        lines += [latex_cell(n) + r"\par" for n in notes]
        lines += ["}"]
    lines += [r"\end{table}"]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = (
    "dataset", "model", "method", "variant", "scheme", "rule", "n", "n_failed", "n_uncompressed", "seeds",
    "top1_mean", "top1_std", "top1_ci95", "top1_lo", "top1_hi", "top1_clipped",
    "top5_mean", "top5_std", "top5_ci95", "top5_lo", "top5_hi", "top5_clipped",
    "macs_mean", "dense_macs_mean", "macs_speedup_mean", "macs_speedup_ci95",
    "conv_macs_mean", "dense_conv_macs_mean", "conv_macs_speedup_mean", "conv_macs_speedup_ci95",
    "latency_ms_mean", "latency_speedup_mean", "latency_speedup_ci95",
    "latency_device", "latency_dtype", "latency_batch", "latency_layout_setting", "latency_layout",
    "dense_latency_layout",
    "params_count_mean", "gpu_hours_mean", "gpu_hours_total_mean", "wall_s_mean", "wall_s_total_mean",
    "gpu", "mixed_recipes",
)


def to_csv(summary: pd.DataFrame) -> str:
    """Raw numbers, one row per group: for spreadsheets and scripts, not for reading."""
    s = sort_rows(summary) if not summary.empty else summary
    out = s.reindex(columns=list(CSV_COLUMNS))
    out["seeds"] = out["seeds"].map(lambda v: " ".join(map(str, v)) if isinstance(v, list) else v)
    return out.to_csv(index=False)


def render(summary: pd.DataFrame, fmt: str, columns: Sequence[str] | None = None) -> str:
    """The table in one of ``FORMATS``; ``columns`` selects the people-facing columns (md,
    latex); CSV always keeps every raw number."""
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    if fmt == "csv":
        return to_csv(summary)
    return (to_markdown if fmt == "md" else to_latex)(summary, columns=columns)


def write_tables(summary: pd.DataFrame, out_dir: str | Path, stem: str = "table",
                 columns: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt in FORMATS:
        path = out / f"{stem}.{SUFFIX[fmt]}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(render(summary, fmt, columns))
        tmp.replace(path)  # atomic, like every other write of the harness
        written[fmt] = path
    return written


# ---------------------------------------------------------------------------- failures

def failed_list(df: pd.DataFrame) -> str:
    """Markdown list of the trials that did not finish, with their error; "" when none."""
    bad = failed_trials(df)
    if bad.empty:
        return ""
    lines = [f"**{len(bad)} failed trial(s)** (not in the table above):"]
    for _, r in bad.iterrows():
        what = " ".join(str(x) for x in (r["method"], r["variant"]) if not is_missing(x) and x)
        seed = "" if is_missing(r["seed"]) else f" seed {int(r['seed'])}"
        err = str(r["error"]).strip().splitlines()[-1] if not is_missing(r["error"]) and r["error"] else "no error recorded"
        epoch = "" if is_missing(r["last_good_epoch"]) else f" (last good epoch {int(r['last_good_epoch'])})"
        where = f"{r['dataset']}/{r['model']}" if not is_missing(r["dataset"]) else ""
        lines.append(f"- `{r['sweep']}/{r['trial_id']}` {where} {what}{seed}: {err}{epoch}".replace("  ", " "))
    return "\n".join(lines) + "\n"


def quick_table(results_dir: str | Path | Sequence[str | Path], trial_ids: Sequence[str] | None = None) -> str:
    """The Markdown table ``rankbench run`` prints at its end, followed by any failures.
    ``trial_ids``: only these trials (a spec's), so rows of trials since removed from the spec,
    still in the folder, do not enter the table."""
    df = load_results(results_dir)
    if trial_ids is not None and not df.empty:
        df = df[df["trial_id"].isin(set(trial_ids))]
    if df.empty:
        return f"(no result rows under {results_dir})\n"
    text = to_markdown(summarize(df))
    failed = failed_list(df)
    return text + ("\n" + failed if failed else "")
