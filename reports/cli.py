"""``rankbench report [RESULTS...] [--paper NAME] [--format md|latex|csv|LIST|all] [--columns SET|KEYS]
[--compare [REF]] [--plot FILE] [--ranks FILE] [--out DIR]``.

Prints the accuracy/speed-up table in the first ``--format`` and writes it in each one named
(table.md by default; table.tex, table.csv) into the results folder (or ``--out``), lists failed
trials, and with ``--paper`` prints the published table beside ours (written as
paper-<NAME>.<suffix> in the same formats; with no results, written only under ``--out``).
``--columns`` picks the people-facing columns (a set: all, paper, compact; or keys such as
``method,top1,macs_speedup``; ``paper`` also sets the best of each column in bold); ``--compare``
the paired differences to a reference (by default the dense row and the best non-TRP method at
each speed-up); ``--plot`` draws the Pareto plot, ``--ranks`` the per-layer kept rank / full
rank of every method variant, in one colour and marker per method throughout.
``bench/cli.py`` dispatches ``rankbench report`` here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from rankbench.bench.checks import PATH_QUOTE, bad
from rankbench.reports import compare, paper, plots, tables
from rankbench.reports.collate import load_results, mixed_code, summarize


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rankbench report",
        description="Tables (Markdown, LaTeX, CSV), paper comparisons and Pareto plots from result rows.")
    p.add_argument("results", nargs="*", default=None,
                   help="results folders: a sweep (results/quick), a root of sweeps (results), "
                        "or a trials folder (default: results)")
    p.add_argument("--paper", choices=paper.available_papers(), metavar="NAME",
                   help="compare with a published table: " + ", ".join(paper.available_papers()))
    p.add_argument("--format", metavar="FMT", default=None,
                   help="what is printed and written: md, latex, csv, several joined by commas (md,latex; the "
                        "first is printed) or all (default md: table.md only)")
    p.add_argument("--columns", metavar="SET|KEYS", default=None,
                   help="table columns (md, latex): a set (" + ", ".join(tables.COLUMN_SETS) + ") or comma-separated "
                        "keys of: " + ", ".join(tables.COLUMN_KEYS) + " (default: all); paper: few columns, "
                        "the best value of each column in bold, a caption naming data and model")
    p.add_argument("--plot", metavar="FILE", help="Pareto plot; FILE.png and FILE.svg are written")
    p.add_argument("--ranks", metavar="FILE",
                   help="per-layer ranks (kept / full, one line per method variant); FILE.png and FILE.svg")
    p.add_argument("--compare", metavar="REF", nargs="?", const=compare.AUTO,
                   help="paired differences of every method to REF over the seeds both ran, with 95%% "
                        "intervals: a method (dense), method[variant] or a spec label; with no REF (or "
                        "'auto'): the dense row, and at each speed-up the best non-TRP method; "
                        "compare.<format> is written")
    p.add_argument("--html", metavar="FILE",
                   help="one self-contained results page (no server, no network): the table, figures, "
                        "comparisons, paper diffs and every trial")
    p.add_argument("--out", metavar="DIR",
                   help="where table.<format> goes (default: the results folder when it holds rows; with "
                        "--paper and no results nothing is written unless --out is given)")
    return p


def _fail(message: str) -> int:
    """Say on stderr what is wrong with the input; returns the exit status for bad input."""
    print(message, file=sys.stderr)
    return 2


def _out_dir(args: argparse.Namespace) -> Path | None:
    """Where the tables go: ``--out``, else the one results folder (here for a storage URI);
    None when several results folders are given without ``--out``."""
    if args.out:
        return Path(args.out)
    if len(args.results) == 1 and "://" in args.results[0]:
        return Path(".")         # results on a storage URI: the tables are written here, locally
    if len(args.results) == 1:
        return Path(args.results[0])
    return None


def _compare_folder(args: argparse.Namespace) -> None:
    """``--compare RESULTS`` (the optional REF took the folder): the folder is a results folder and
    the reference is the default one."""
    ref = args.compare
    if ref in (None, compare.AUTO) or "://" in ref or not Path(ref).is_dir():
        return
    p = Path(ref)
    if p.name == "trials" or (p / "trials").is_dir() or any(p.glob("*/trials")):
        args.results = [*(args.results or []), ref]
        args.compare = compare.AUTO


def _print_tables(df: pd.DataFrame, out: Path, formats: tuple[str, ...], columns: tuple[str, ...] | None,
                  bold: bool) -> pd.DataFrame:
    """Print the table in the first of ``formats``, write it in each (``table.<suffix>``), list the
    failed trials; returns the summary."""
    summary = summarize(df)
    if not summary.empty:
        print(tables.render(summary, formats[0], columns, bold))
        written = tables.write_tables(summary, out, columns=columns, formats=formats, bold_best=bold)
        print("tables written: " + ", ".join(str(p) for p in written.values()))
    else:
        print("(no successful trials)")
    for method, versions in mixed_code(df).items():
        # a number from other code than the user thinks must not pass for one result
        print(f"note: the {method} rows of this table come from {len(versions)} code versions: " + "; ".join(versions))
    failed = tables.failed_list(df)
    if failed:
        print("\n" + failed)
    return summary


def _comparison(df: pd.DataFrame | None, ref: str, out: Path, formats: tuple[str, ...]) -> int:
    """Print and write (compare.<suffix> per format) each method's paired difference to ``ref``
    (``compare.AUTO``: the default references); the exit status."""
    if df is None or df.empty:
        return _fail(f"error: {bad('--compare', ref, 'results with successful trials', 'no result rows')}")
    try:
        table = compare.paired(df, None if ref == compare.AUTO else ref)
    except ValueError as e:
        return _fail(f"error: {e}")
    what = "the default references (dense; the best non-TRP method at each speed-up)" if ref == compare.AUTO else ref
    print(f"\npaired comparison with {what}:\n{compare.render(table, formats[0])}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in formats:
        paths.append(out / f"compare.{tables.SUFFIX[f]}")
        paths[-1].write_text(compare.render(table, f) + ("\n" if f != "csv" else ""))
    print("comparison written: " + ", ".join(str(p) for p in paths))
    return 0


def _paper_comparison(name: str, results: list[str], formats: tuple[str, ...], out: Path | None) -> pd.DataFrame:
    """Print the published table beside ours and write it as paper-<NAME>.<suffix> per format
    (nothing when ``out`` is None: no results and no ``--out``); returns it."""
    dirs = [r for r in results if Path(r).exists()]
    diff = paper.paper_diff(name, dirs)
    print("\n" + paper.format_paper_diff(diff, formats[0]))
    if out is None:
        print(f"(nothing written: no results; --out DIR writes paper-{name}.{tables.SUFFIX[formats[0]]} there)")
        return diff
    out.mkdir(parents=True, exist_ok=True)
    for f in formats:
        (out / f"paper-{name}.{tables.SUFFIX[f]}").write_text(paper.format_paper_diff(diff, f))
    print(f"paper comparison written: {out}/paper-{name}.{{{','.join(tables.SUFFIX[f] for f in formats)}}}")
    return diff


def _pareto_plot(args: argparse.Namespace, summary: pd.DataFrame | None, diff: pd.DataFrame | None) -> int:
    """Draw ``--plot`` (with the paper's published points under ``--paper``); returns the exit status."""
    if summary is None or summary.empty:
        return _fail(f"error: {bad('--plot', args.plot, 'results with at least one successful trial', 'nothing to plot', PATH_QUOTE)}")
    pub = paper.published_points(args.paper) if args.paper else None
    title = paper.load_published(args.paper)["title"] if args.paper else None
    if diff is not None and diff["status"].astype(str).str.startswith("recipe differs").any():
        # the hollow published points sit beside trials of another recipe: say so on the figure
        title += ": ours ran another recipe than the paper spec (see the table), not comparable"
    paths = plots.pareto_plot(summary, args.plot, pub, title, styles=plots.report_styles(summary))
    print("plot written: " + ", ".join(str(p) for p in paths))
    return 0


def _ranks_plot(df: pd.DataFrame | None, file: str) -> int:
    """Draw ``--ranks``, the per-layer kept / full rank of every variant; returns the exit status."""
    if df is None or df.empty or not (df["status"] == "ok").any():
        return _fail("report: --ranks needs at least one successful trial")
    try:
        # the Pareto plot's mapping: the same label set (every successful group), one style per method
        paths = plots.ranks_plot(df, file, styles=plots.report_styles(df))
    except ValueError as e:
        return _fail(f"report: {e}")
    print("ranks plot written: " + ", ".join(str(p) for p in paths))
    return 0


def _html_page(args: argparse.Namespace, df: pd.DataFrame | None) -> int:
    """Write ``--html``, the one-file results page; returns the exit status."""
    from rankbench.reports import html

    if df is None or df.empty:
        return _fail(f"error: {bad('--html', args.html, 'results with result rows', 'nothing to show', PATH_QUOTE)}")
    path = html.write_html(df, args.html, args.results, columns=tables.parse_columns(args.columns),
                           compare_ref=args.compare, paper_name=args.paper)
    print(f"page written: {path}")
    return 0


def main_report(argv: list[str]) -> int:
    """Run ``rankbench report``; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    _compare_folder(args)
    args.results = args.results or ["results"]
    try:
        columns = tables.parse_columns(args.columns)
        formats = tables.parse_formats(args.format)
    except ValueError as e:
        return _fail(f"error: {e}")
    out = _out_dir(args)
    if out is None:
        return _fail(f"error: {bad('--out', None, 'a folder for the tables', 'needed when several results folders are given')}")
    try:
        df = load_results(args.results)
    except FileNotFoundError as e:
        if not args.paper:
            return _fail(f"error: {bad('results', ' '.join(args.results), 'a results folder, a sweep folder or a storage URI', str(e).removeprefix('results: '), PATH_QUOTE)}")
        df = None  # a paper table without results still shows what to run

    if args.paper and df is not None:
        # results of another dataset or model (e.g. the quick digits run) have nothing to compare:
        # say so, rather than print a table of "not run" rows and a figure titled with the paper
        problem = paper.coverage_problem(args.paper, df)
        if problem:
            return _fail(problem)

    has_rows = df is not None and not df.empty
    if not has_rows and not args.paper:
        return _fail(f"error: {bad('results', ' '.join(args.results), 'a folder holding trials/<id>.json rows', 'no result rows', PATH_QUOTE)}")
    if not has_rows and not args.out:
        out = None      # a published table without results: printed, nothing written unless --out
    bold = args.columns == "paper"    # the paper preset sets the best of each column in bold
    summary = _print_tables(df, out, formats, columns, bold) if has_rows else None
    if args.compare and (status := _comparison(df, args.compare, out, formats)):
        return status
    diff = _paper_comparison(args.paper, args.results, formats, out) if args.paper else None
    if args.plot and (status := _pareto_plot(args, summary, diff)):
        return status
    if args.ranks and (status := _ranks_plot(df, args.ranks)):
        return status
    if args.html and (status := _html_page(args, df)):
        return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main_report(sys.argv[1:]))
