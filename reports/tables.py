"""The accuracy-vs-speed-up table in Markdown, LaTeX (booktabs) and CSV.

Input is ``collate.summarize``'s grouped view. Markdown and LaTeX are for people and follow
paper conventions (``90.50 ± 0.21``, ``2.17x``, ``40.6M``); CSV is for machines and keeps the
raw numbers (mean, std, CI half-width, n) in separate columns. Which columns people see, and
which cells are set in bold, is ``rankbench.reports.columns``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from rankbench.bench.checks import unknown
from rankbench.reports.collate import BOUNDS, failed_trials, load_results, summarize
from rankbench.reports.columns import (COLUMN_KEYS, COLUMN_SETS, best_cells, column_key, parse_columns,  # noqa: F401 (re-exported)
                                       select_columns)
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


# A note is shown when the table shows a column it speaks of (``NOTE_KEYS``); one with no key
# (a warning about the rows themselves) always is.
Note = tuple[frozenset, str]
_INTERVAL_KEYS = frozenset({"top1", "top5", "macs_speedup", "latency_speedup"})


def _seeds_phrase(s: pd.DataFrame, seeds_shown: bool) -> str:
    """Where a reader finds n: the Seeds column when shown, else n itself."""
    if seeds_shown:
        return "the n seeds in the Seeds column"
    ns = sorted({int(n) for n in s["n"]})
    if len(ns) == 1:
        return f"n = {ns[0]} seed{'s' * (ns[0] != 1)}"
    return f"each row's seeds (n = {ns[0]} to {ns[-1]}; table.csv gives each row's n)"


def _convention_notes(s: pd.DataFrame, shape: _Shape, seeds_shown: bool = True) -> list[Note]:
    """Notes that say what each number of the table means: its interval, MAC count, latency, cost."""
    notes = [
        (frozenset({"top1", "top5"}), f"Top-1/Top-5: mean ± 95% CI half-width (t distribution) over "
         f"{_seeds_phrase(s, seeds_shown)}" + ("; no ± with one seed." if (s["n"] == 1).any() else ".")),
        (frozenset({"macs", "macs_speedup"}), "MACs per image (one multiply-add = one MAC, fvcore count of the "
         "model actually run); MAC speed-up = dense MACs / MACs."),
    ]
    if shape.lat_setting:
        notes.append((frozenset({"latency_speedup"}), "Measured speed-up = dense median latency / median latency"
                      + (f" on {next(iter(shape.lat_setting))}." if shape.lat_uniform else ", setting per cell.")))
        if "latency_layout" in s and s["latency_layout"].notna().any():
            notes.append((frozenset({"latency_speedup"}), _layout_note(s)))
    what = {"cpu": "Compression cost is wall time on CPU (no GPU was used)",
            "gpu": "Compression cost in GPU-hours",
            "mixed": "Compression cost: GPU-hours where a GPU was used, else CPU wall time"}[shape.cost]
    cost = frozenset({"cost", "cost_total"})
    if shape.with_base:
        notes.append((cost, what + "; own: the trial's training + compression + fine-tuning (a method that "
                      "starts from the trained dense baseline does not train it); incl. baseline: "
                      "own plus that baseline's training (- when its row is not in the results)."))
    else:
        notes.append((cost, what + ": training + compression + fine-tuning."))
    return notes


def _caveat_notes(s: pd.DataFrame, rows: list[list[str]], constant: dict[str, dict]) -> list[Note]:
    """Notes that only some tables need: clipped or wide intervals, uncompressed models, the
    parameters a method kept constant, and rows that merge different specs. ``rows``: the cells
    shown (a clipped interval in a column left out needs no note)."""
    notes: list[Note] = []
    if any(c.endswith(CLIPPED) or f"{CLIPPED} " in c for row in rows for c in row):
        notes.append((frozenset(), f"{CLIPPED} The 95% interval reaches past what the metric can take; shown as "
                      "[low, high], clipped to it (0-100 for accuracies, > 0 for speed-ups)."))
    if (s["n"] == 2).any():
        notes.append((_INTERVAL_KEYS, "With n = 2 seeds a 95% t interval is 12.7 standard errors wide: "
                      "such an interval says little; run more seeds to narrow it."))
    if "n_uncompressed" in s and (s["n_uncompressed"].fillna(0) > 0).any():
        notes.append((frozenset({"method"}), f"{NOT_COMPRESSED}: the deployed model is the dense one (MACs = dense "
                      "MACs): the method selected no layer or kept every rank; its accuracy is the dense model's."))
    for m, const in constant.items():
        if const:
            notes.append((frozenset({"method"}), f"{m}: " + ", ".join(f"{k}={v}" for k, v in const.items())))
    if "mixed_recipes" in s and s["mixed_recipes"].any():
        notes.append((frozenset(), "Warning: some rows merge seeds trained with different specs "
                      "(results from several sweeps); compare them with care."))
    return notes


def table_cells(summary: pd.DataFrame, columns: Sequence[str] | None = None
                ) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of display strings and notes for the people-facing formats; ``columns``:
    keys of ``COLUMN_KEYS`` to keep (see :func:`select_columns`), and only the notes that speak
    of a column shown (no "Seeds column" note without that column)."""
    s = sort_rows(summary)
    varying, constant = _varying_params(s)
    shape = _shape(s)
    header, rows = select_columns(_header(shape), [_row_cells(r, varying, shape) for _, r in s.iterrows()], columns)
    shown = {column_key(h) for h in header}
    notes = _convention_notes(s, shape, "seeds" in shown) + _caveat_notes(s, rows, constant)
    return header, rows, [text for keys, text in notes if not keys or keys & shown]


def caption_for(summary: pd.DataFrame) -> str:
    """One sentence naming what the table shows: the models and the data they ran on."""
    if summary.empty:
        return "Accuracy versus speed-up."
    per_data: dict[str, list[str]] = {}
    for d, m in summary[["dataset", "model"]].drop_duplicates().itertuples(index=False, name=None):
        per_data.setdefault(str(d), []).append(str(m))
    what = "; ".join(f"{' and '.join(sorted(ms))} on {d}" for d, ms in sorted(per_data.items()))
    return f"Accuracy versus speed-up of low-rank compression: {what}."


# ---------------------------------------------------------------------------- renderers

def to_markdown(summary: pd.DataFrame, title: str | None = None, columns: Sequence[str] | None = None,
                bold_best: bool = False) -> str:
    """A Markdown table with its notes as a list below it (what ``rankbench run`` prints);
    ``columns``: keys of ``COLUMN_KEYS`` to keep (see :func:`parse_columns`); ``bold_best``:
    the best value of each column among the compressed methods in bold (:func:`best_cells`)."""
    if summary.empty:
        return "(no successful trials)\n"
    header, rows, notes = table_cells(summary, columns)
    bold = best_cells(summary, header) if bold_best else set()
    # escaped first: widths are of what is printed
    cells = [[(f"**{markdown_cell(c)}**" if (j, i) in bold else markdown_cell(c)) for i, c in enumerate(r)]
             for j, r in enumerate(rows)]
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
    if bold:
        notes.append("Bold: the best value of its column among the compressed methods of its dataset and model.")
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


def to_latex(summary: pd.DataFrame, caption: str | None = None, label: str | None = None,
             columns: Sequence[str] | None = None, bold_best: bool = False) -> str:
    """A booktabs ``table`` environment; needs ``\\usepackage{booktabs}``. The caption is one
    sentence (default :func:`caption_for`: the models and data); the notes (CI, MAC convention,
    latency setting, cost; only those of the columns shown) follow the tabular as a
    footnote-size paragraph. ``label``: default :func:`latex_label`, unique to the table.
    ``columns``: keys of ``COLUMN_KEYS`` to keep; ``bold_best``: see :func:`best_cells`."""
    if summary.empty:
        header, rows, notes = ["Method"], [], ["no successful trials"]
    else:
        header, rows, notes = table_cells(summary, columns)
    bold = best_cells(summary, header) if bold_best and not summary.empty else set()
    if bold:
        notes.append("Bold: the best value of its column among the compressed methods of its dataset and model.")
    # the latency setting is in the notes; a narrow header keeps the table printable
    header = ["Measured speed-up" if h.startswith("Measured speed-up") else h for h in header]
    label = label or latex_label(summary, columns)
    text_cols = {"Dataset", "Model", "Method", "Scheme", "Rank rule"}
    spec = "".join("l" if h in text_cols else "r" for h in header)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        f"\\caption{{{latex_escape(caption or caption_for(summary))}}}",
        f"\\label{{{label}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_cell(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join((f"\\textbf{{{latex_cell(c)}}}" if (j, i) in bold else latex_cell(c))
                         for i, c in enumerate(r)) + r" \\" for j, r in enumerate(rows)]
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


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``--format``: one of ``FORMATS``, several joined by commas (``md,latex``) or ``all``; the
    first is the one printed, every one is written. None: ``md``."""
    if text is None:
        return ("md",)
    if text == "all":
        return FORMATS
    fmts = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    for f in fmts or (text,):
        if f not in FORMATS:
            raise unknown("--format", f, (*FORMATS, "all"))
    return fmts


def render(summary: pd.DataFrame, fmt: str, columns: Sequence[str] | None = None, bold_best: bool = False) -> str:
    """The table in one of ``FORMATS``; ``columns`` selects the people-facing columns (md,
    latex); CSV always keeps every raw number. ``bold_best``: see :func:`best_cells`."""
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    if fmt == "csv":
        return to_csv(summary)
    return (to_markdown if fmt == "md" else to_latex)(summary, columns=columns, bold_best=bold_best)


def write_tables(summary: pd.DataFrame, out_dir: str | Path, stem: str = "table",
                 columns: Sequence[str] | None = None, formats: Sequence[str] = FORMATS,
                 bold_best: bool = False) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv`` (those of ``formats``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt in formats:
        path = out / f"{stem}.{SUFFIX[fmt]}"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(render(summary, fmt, columns, bold_best))
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
