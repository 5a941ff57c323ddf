"""One self-contained results page: ``write_html(df, file, results)`` for ``rankbench report --html``.

The page is a single HTML file that opens from a mail attachment: no server, no network. Its
styles and its one small script (click a column header to sort) are inline, its figures are the
report's own SVG (``rankbench.reports.plots``) inlined as markup, and a Content-Security-Policy
meta tag forbids every load (``default-src 'none'``; only inline style and script run), so a
figure or a row that names an address cannot make the page fetch it. Every text taken from a row
is escaped (``html.escape``): rows may come from someone else's storage.

Sections, in reading order: the summary table (the cells ``rankbench report`` prints, from
``tables.table_cells``) with its notes, the Pareto figure, per-layer ranks (figure and table, by
layer name), the paired comparisons (``compare.paired``), each paper diff the results have rows
for (``paper.paper_diff``), and one row per trial that expands to its spec, layers, method_info,
code identity and the tail of its log (``<results>/<sweep>/logs/<trial_id>.log``).

May import: ``rankbench.bench.checks``, ``rankbench.bench.results``, ``rankbench.bench.trial``,
``rankbench.bench.version`` and the modules of this room below the command line.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from rankbench.bench.results.provenance import describe_code
from rankbench.bench.trial import BASELINE
from rankbench.bench.version import __version__
from rankbench.reports import compare, paper, plots, tables
from rankbench.reports.collate import mixed_code, ok_trials, summarize
from rankbench.reports.format import DASH, display_name, fmt_duration, fmt_x, is_missing, one_line

LOG_LINES = 40
# no fetch of any kind: only the inline style and script of the page itself run
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2430;
 margin:0 auto;padding:1.2em 2em 4em;max-width:1500px;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.25em;margin:1.8em 0 .5em;padding-top:.6em;
 border-top:1px solid #d8dde6}h3{font-size:1.05em;margin:1.2em 0 .4em}
.lead{color:#4a5568;margin:.2em 0 .8em}nav a{margin-right:1.1em;color:#2b6cb0}
.wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:.3em 0;font-size:13px}
th,td{padding:.3em .5em;border-bottom:1px solid #e3e7ee;vertical-align:top}
th{background:#f2f4f8;text-align:left;font-weight:600;max-width:16em}
td.num{text-align:right;white-space:nowrap}th.num{text-align:right}
td.iv{white-space:nowrap}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e4e9f2}
th[aria-sort=ascending]::after{content:" \\25B2";font-size:.75em}
th[aria-sort=descending]::after{content:" \\25BC";font-size:.75em}
tbody tr:hover{background:#f7f9fc}
ul.notes{color:#4a5568;font-size:.92em;padding-left:1.2em;max-width:75em}
.warn{color:#9b2c2c}.svg svg{max-width:100%;height:auto}
code,pre{font:12.5px/1.4 ui-monospace,"DejaVu Sans Mono",monospace}
pre{background:#f6f8fa;padding:.6em .8em;overflow-x:auto;max-height:28em;border-radius:4px}
details.trial{border-bottom:1px solid #e3e7ee}
details.trial>summary{cursor:pointer;padding:.3em .4em;display:grid;gap:.8em;
 grid-template-columns:9em 16em minmax(10em,1fr) 4em 4.5em 6em 5em 5em}
details.trial>summary:hover{background:#f7f9fc}details.trial[open]>summary{background:#eef2f8}
details.trial>div{padding:.2em 1em 1em 1.6em}
.status-ok{color:#276749}.status-failed{color:#9b2c2c;font-weight:600}
details.trial>summary>span:first-child::before{content:"\\25B8  ";color:#718096}
details.trial[open]>summary>span:first-child::before{content:"\\25BE  "}
th.wide{min-width:12em}
.trials-head{display:grid;gap:.8em;padding:.3em .4em;font-weight:600;background:#f2f4f8;
 grid-template-columns:9em 16em minmax(10em,1fr) 4em 4.5em 6em 5em 5em}
"""

# Click (or Enter on) a header to sort its table's rows; again to reverse. Numeric columns sort
# by the number in each cell's data-v; cells without one (a dash) go last either way.
SCRIPT = """
(function(){
function sortBy(table, th, i){
  var asc = th.getAttribute('aria-sort') !== 'ascending';
  Array.prototype.forEach.call(th.parentNode.cells, function(h){ h.removeAttribute('aria-sort'); });
  th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
  var num = th.getAttribute('data-type') === 'num', body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function(a, b){
    if (num) {
      var u = parseFloat(a.cells[i].getAttribute('data-v')), v = parseFloat(b.cells[i].getAttribute('data-v'));
      if (isNaN(u) || isNaN(v)) return (isNaN(u) ? 1 : 0) - (isNaN(v) ? 1 : 0);
      return asc ? u - v : v - u;
    }
    var c = a.cells[i].textContent.localeCompare(b.cells[i].textContent, undefined, {numeric: true});
    return asc ? c : -c;
  });
  rows.forEach(function(r){ body.appendChild(r); });
}
document.querySelectorAll('table.sortable').forEach(function(table){
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
    th.tabIndex = 0;
    th.title = 'sort by this column';
    th.addEventListener('click', function(){ sortBy(table, th, i); });
    th.addEventListener('keydown', function(e){
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(table, th, i); }
    });
  });
});
})();
"""


def esc(value: Any) -> str:
    """Any value as HTML text: escaped, quotes included (it may land in an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def inline_markup(text: str) -> str:
    """A note written for Markdown as HTML: escaped first, then `code` and **bold** marked."""
    t = esc(text)
    t = re.sub(r"`([^`]*)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


# ---------------------------------------------------------------------------- sortable tables

_NUMBER = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*(K|M|G|T|x|s|min|h|GPU-h)?(?![A-Za-z0-9])")
_SCALE = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "min": 60.0, "h": 3600.0, "GPU-h": 3600.0}


def sort_value(cell: str) -> float | None:
    """The number a display cell sorts by (``97.22 ± 1.20`` -> 97.22, ``747K`` -> 747000,
    ``3.1 min`` -> 186 s, ``2.00x`` -> 2.0); None for a dash or a text."""
    m = _NUMBER.match(cell.strip())
    if not m:
        return None
    return float(m.group(1)) * _SCALE.get(m.group(2) or "", 1.0)


def _th(header: str, numeric: bool) -> str:
    # a long header (the latency setting) gets room, not a column of one word a line
    classes = " ".join(c for c, on in (("num", numeric), ("wide", len(header) > 40)) if on)
    return ("<th" + (f' class="{classes}"' if classes else "") + (' data-type="num"' if numeric else "")
            + f">{esc(header)}</th>")


def _td(cell: str, numeric: bool) -> str:
    if numeric:
        v = sort_value(cell)
        return f'<td class="num" data-v="{v!r}">{inline_markup(cell)}</td>' if v is not None \
            else f'<td class="num">{inline_markup(cell)}</td>'
    if re.fullmatch(r"\[[^\]]*\]", cell):       # an interval: on one line
        return f'<td class="iv">{inline_markup(cell)}</td>'
    # a long variant (k=v,k=v,...) may break after its commas
    return f"<td>{inline_markup(cell).replace(',', ',<wbr>')}</td>"


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]], sortable: bool = True) -> str:
    """A table of display strings. A column whose every cell but dashes holds a number is
    numeric: right-aligned, each cell's number in ``data-v`` for the sort."""
    numeric = []
    for i in range(len(header)):
        cells = [r[i] for r in rows if r[i].strip() not in ("", DASH)]
        numeric.append(bool(cells) and all(sort_value(c) is not None for c in cells))
    head = "".join(_th(h, num) for h, num in zip(header, numeric))
    body = "".join("<tr>" + "".join(_td(c, num) for c, num in zip(r, numeric)) + "</tr>" for r in rows)
    table = '<table class="sortable">' if sortable else "<table>"
    return f'<div class="wrap">{table}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def notes_html(notes: Sequence[str]) -> str:
    return '<ul class="notes">' + "".join(f"<li>{inline_markup(one_line(n))}</li>" for n in notes) + "</ul>" \
        if notes else ""


# ---------------------------------------------------------------------------- sections

def _summary_section(df: pd.DataFrame, summary: pd.DataFrame, columns: Sequence[str] | None) -> str:
    """The table ``rankbench report`` prints, sortable, its notes, mixed code and failures."""
    parts = ['<h2 id="summary">Summary</h2>']
    if summary.empty:
        parts.append("<p>(no successful trials)</p>")
    else:
        header, rows, notes = tables.table_cells(summary)
        header, rows = tables.select_columns(header, rows, columns)
        parts += ['<p class="lead">Click a column header to sort by it.</p>', table_html(header, rows),
                  notes_html(notes)]
    for method, versions in mixed_code(df).items():
        parts.append(f'<p class="warn">The {esc(method)} rows of this table come from {len(versions)} code '
                     f"versions: {esc('; '.join(versions))}</p>")
    failed = tables.failed_list(df).strip().splitlines()
    if failed:
        parts.append(f'<p class="warn">{inline_markup(failed[0])}</p>'
                     + notes_html([line.removeprefix("- ") for line in failed[1:]]))
    return "\n".join(parts)


def clean_svg(svg: str) -> str:
    """matplotlib's SVG file as markup inside HTML: no XML prolog, DOCTYPE or metadata block
    (they name W3C and Creative Commons addresses), and no namespace attributes (the HTML parser
    puts <svg> in its namespace itself)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg, count=3)


def _figures_section(df: pd.DataFrame, summary: pd.DataFrame, paper_name: str | None) -> str:
    """The Pareto figure, then per-layer ranks: the figure and a table by layer name."""
    parts = ['<h2 id="pareto">Accuracy against speed-up</h2>']
    if summary.empty:
        parts.append("<p>(no successful trials to plot)</p>")
    else:
        pub = paper.published_points(paper_name) if paper_name else None
        title = paper.load_published(paper_name)["title"] if paper_name else None
        svg = plots.svg_text(plots.pareto_plot, summary, published=pub, title=title)
        parts.append(f'<div class="svg">{clean_svg(svg)}</div>')
    parts.append('<h2 id="ranks">Per-layer ranks</h2>')
    series = plots.rank_series(df)
    if not series:
        parts.append("<p>(no successful trial reports per-layer ranks: dense rows have none)</p>")
        return "\n".join(parts)
    parts.append(f'<div class="svg">{clean_svg(plots.svg_text(plots.ranks_plot, df))}</div>')
    for (dataset, model), lines in series.items():
        order = list(dict.fromkeys(n for line in lines.values() for n in line))
        shapes = _layer_shapes(df, dataset, model)
        header = ["Layer", "Shape"] + list(lines)
        rows = [[n, shapes.get(n, DASH)] + [_kept(layers.get(n)) for layers in lines.values()] for n in order]
        parts += [f"<h3>{esc(model)} on {esc(dataset)}: kept rank / full rank (mean over seeds)</h3>",
                  table_html(header, rows)]
    parts.append(notes_html(["dense: the layer was left dense (skipped); each trial below lists its exact "
                             "ranks (open its row)."]))
    return "\n".join(parts)


def _layer_shapes(df: pd.DataFrame, dataset: str, model: str) -> dict[str, str]:
    """Layer name -> its weight's shape (``16x3x3x3``), as the rows of one (dataset, model) report it."""
    rows = df[(df["dataset"].astype(str) == dataset) & (df["model"].astype(str) == model)]
    out: dict[str, str] = {}
    for layers in rows["layers"]:
        for L in layers if isinstance(layers, list) else []:
            if isinstance(L, dict) and isinstance(L.get("shape"), list):
                out.setdefault(str(L.get("name")), "x".join(map(str, L["shape"])))
    return out


def _kept(value: tuple[float, bool] | None) -> str:
    if value is None or is_missing(value[0]):
        return DASH
    return "dense" if value[1] else f"{value[0]:.2f}"


def _compare_section(df: pd.DataFrame, ref: str | None) -> str:
    """Each method's paired difference in top-1 to ``ref``; None (or ``compare.AUTO``): the
    default references, the dense row and the best baseline method at each speed-up."""
    auto = ref in (None, compare.AUTO)
    what = "the dense row, and at each speed-up the best baseline method" if auto else esc(ref)
    parts = ['<h2 id="compare">Paired comparisons</h2>',
             f'<p class="lead">Each method against {what}, seed by seed over the seeds both ran.</p>']
    if ok_trials(df).empty:
        return "\n".join(parts + ["<p>(no successful trials)</p>"])
    try:
        table = compare.paired(df, None if auto else ref)
    except ValueError as e:
        return "\n".join(parts + [f'<p class="warn">{esc(e)}</p>'])
    header, rows, notes = compare.cells(table)
    return "\n".join(parts + [table_html(header, rows), notes_html(notes)])


def _paper_sections(df: pd.DataFrame, results: Sequence[str], paper_name: str | None) -> str:
    """Each published table the results hold trials of (``--paper NAME``'s always)."""
    parts = []
    dirs = [r for r in results if "://" in r or Path(r).exists()]
    for name in paper.available_papers():
        if name != paper_name and (ok_trials(df).empty or paper.coverage_problem(name, df) is not None):
            continue
        diff = paper.paper_diff(name, dirs)
        header, rows, notes = paper.diff_cells(diff)
        title = diff.attrs.get("table", {}).get("title", name)
        parts += [f'<h2 id="paper-{esc(name)}">{esc(title)}: published vs ours</h2>',
                  table_html(header, rows), notes_html(notes)]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- trials

def log_tail(row: pd.Series, lines: int = LOG_LINES) -> tuple[str | None, str]:
    """(the last ``lines`` lines of the trial's log, its path); None when there is none. A row's
    trial id names the file only when it is a plain name (no path can be read through it)."""
    tid, source = str(row.get("trial_id")), row.get("source")
    if not isinstance(source, str) or "://" in source or not re.fullmatch(r"[\w-]+", tid):
        return None, ""
    path = Path(source).parent.parent / "logs" / f"{tid}.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64 * 1024))    # enough bytes for 40 lines of progress
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None, str(path)
    return "\n".join(text.splitlines()[-lines:]), str(path)


def _json(value: Any) -> str:
    return f"<pre>{esc(json.dumps(value, indent=1, sort_keys=True, default=str))}</pre>"


def _layers_table(layers: Any) -> str:
    if not isinstance(layers, list) or not layers:
        return "<p>(no layers reported)</p>"
    keys = ("name", "shape", "scheme", "rank", "full_rank", "dense_macs", "macs", "skipped")
    rows = [[DASH if L.get(k) is None else str(L.get(k)) for k in keys] for L in layers if isinstance(L, dict)]
    return table_html(list(keys), rows, sortable=False)


def _cell(v: Any, fmt: str) -> str:
    return DASH if v is None or is_missing(v) else fmt.format(v)


def _trial(r: pd.Series) -> str:
    """One trial: a summary line that opens to everything its row says."""
    status = str(r.get("status"))
    name = display_name(r)
    summary = "".join(f"<span>{s}</span>" for s in (
        f"<code>{esc(r.get('trial_id'))}</code>", esc(f"{r.get('dataset')}/{r.get('model')} {name}"),
        esc(r.get("variant") or DASH), esc(_cell(r.get("seed"), "seed {}")),
        f'<span class="status-{"ok" if status == "ok" else "failed"}">{esc(status)}</span>',
        esc(_cell(r.get("top1"), "{:.2f}%")), esc(fmt_x(r.get("macs_speedup"))), esc(fmt_duration(r.get("wall_s")))))
    body = []
    if status != "ok":
        body.append(f'<p class="warn">{esc(r.get("error") or "no error recorded")}</p>')
    code = r.get("code") if isinstance(r.get("code"), dict) else None
    tail, path = log_tail(r)
    body += ["<h4>Layers</h4>", _layers_table(r.get("layers")),
             "<h4>method_info</h4>", _json(r.get("method_info") or {}),
             f"<h4>Code: {esc(describe_code(code))}</h4>", _json(code) if code else "",
             "<h4>Spec</h4>", _json(r.get("spec")),
             f"<h4>Log: last {LOG_LINES} lines of <code>{esc(path or 'its log')}</code></h4>",
             f"<pre>{esc(tail)}</pre>" if tail is not None else "<p>(no log file)</p>",
             f"<p>Row: <code>{esc(r.get('source'))}</code></p>"]
    return f'<details class="trial"><summary>{summary}</summary><div>{"".join(body)}</div></details>'


def _trials_section(df: pd.DataFrame) -> str:
    order = df.assign(_base=(df["method"] != BASELINE)).sort_values(   # as the summary: dense first
        ["dataset", "model", "_base", "method", "variant", "seed"], na_position="last", kind="stable")
    head = "".join(f"<span>{h}</span>" for h in ("Trial", "Method", "Variant", "Seed", "Status", "Top-1",
                                                  "MAC speed-up", "Wall time"))
    return "\n".join([f'<h2 id="trials">Trials ({len(df)})</h2>',
                      '<p class="lead">Open a trial for its layers, method_info, code, spec and log.</p>',
                      f'<div class="trials-head">{head}</div>'] + [_trial(r) for _, r in order.iterrows()])


# ---------------------------------------------------------------------------- the page

def _overview(df: pd.DataFrame, results: Sequence[str]) -> str:
    n_ok = int((df["status"] == "ok").sum())
    sweeps = sorted({str(s) for s in df["sweep"].dropna()})
    pairs = sorted({f"{m} on {d}" for d, m in zip(df["dataset"], df["model"]) if not is_missing(d)})
    seeds = sorted({int(s) for s in df["seed"].dropna()})
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    facts = [f"{len(df)} trials ({n_ok} ok, {len(df) - n_ok} failed)", ", ".join(pairs),
             f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}", "from " + ", ".join(results),
             f"written {when} by rankbench {__version__}"]
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "Summary"), ("pareto", "Pareto"), ("ranks", "Ranks"), ("compare", "Comparison"),
        ("trials", "Trials")))
    return (f"<h1>rankbench results: {esc(', '.join(sweeps) or 'no sweep')}</h1>"
            f'<p class="lead">{esc(" · ".join(f for f in facts if f))}</p><nav>{nav}</nav>')


def page(df: pd.DataFrame, results: Sequence[str], columns: Sequence[str] | None = None,
         compare_ref: str | None = None, paper_name: str | None = None) -> str:
    """The whole page as one HTML string, from ``collate.load_results`` rows."""
    summary = summarize(df)
    sweeps = ", ".join(sorted({str(s) for s in df["sweep"].dropna()}))
    body = [_overview(df, results), _summary_section(df, summary, columns),
            _figures_section(df, summary, paper_name), _compare_section(df, compare_ref),
            _paper_sections(df, results, paper_name), _trials_section(df)]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>rankbench results: {esc(sweeps)}</title><style>{STYLE}</style></head><body>",
        *body, f"<script>{SCRIPT}</script></body></html>", ""])


def write_html(df: pd.DataFrame, file: str | Path, results: Sequence[str], **options: Any) -> Path:
    """Write :func:`page` to ``file`` (atomically; its mode honours the umask); returns the path.
    ``options``: ``columns``, ``compare_ref``, ``paper_name`` of :func:`page`."""
    out = Path(file)
    text = page(df, results, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")      # open() creates it 0666 & ~umask
    tmp.replace(out)
    return out

