"""``rankbench report [RESULTS...] [--paper NAME] [--format md|latex|csv] [--columns SET|KEYS]
[--plot FILE] [--ranks FILE] [--out DIR]``.

Writes the accuracy/speed-up table in all three formats (table.md, table.tex, table.csv) into
the results folder (or ``--out``), prints the chosen format, lists failed trials, and with
``--paper`` prints the published table beside ours (also written as paper-<NAME>.{md,tex,csv}).
``--columns`` picks the people-facing columns (a set: all, paper, compact; or keys such as
``method,top1,macs_speedup``); ``--plot`` draws the Pareto plot, ``--ranks`` the per-layer kept
rank / full rank of every method variant. ``bench/cli.py`` dispatches ``rankbench report`` here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports import paper, plots, tables
from reports.collate import load_results, summarize


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rankbench report",
        description="Tables (Markdown, LaTeX, CSV), paper comparisons and Pareto plots from result rows.")
    p.add_argument("results", nargs="*", default=["results"],
                   help="results folders: a sweep (results/quick), a root of sweeps (results), "
                        "or a trials folder (default: results)")
    p.add_argument("--paper", choices=paper.available_papers(), metavar="NAME",
                   help="compare with a published table: " + ", ".join(paper.available_papers()))
    p.add_argument("--format", choices=tables.FORMATS, default="md", help="format printed (default md)")
    p.add_argument("--columns", metavar="SET|KEYS", default=None,
                   help="table columns (md, latex): a set (" + ", ".join(tables.COLUMN_SETS) + ") or comma-separated "
                        "keys of: " + ", ".join(tables.COLUMN_KEYS) + " (default: all)")
    p.add_argument("--plot", metavar="FILE", help="Pareto plot; FILE.png and FILE.svg are written")
    p.add_argument("--ranks", metavar="FILE",
                   help="per-layer ranks (kept / full, one line per method variant); FILE.png and FILE.svg")
    p.add_argument("--out", metavar="DIR",
                   help="where table.{md,tex,csv} go (default: the results folder when one is given)")
    return p


def main_report(argv: list[str]) -> int:
    """Run ``rankbench report``; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        columns = tables.parse_columns(args.columns)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
    elif len(args.results) == 1 and "://" in args.results[0]:
        out = Path(".")         # results on a storage URI: the tables are written here, locally
    elif len(args.results) == 1:
        out = Path(args.results[0])
    else:
        print("report: --out DIR is needed when several results folders are given", file=sys.stderr)
        return 2
    try:
        df = load_results(args.results)
    except FileNotFoundError as e:
        if not args.paper:
            print(f"report: {e}", file=sys.stderr)
            return 2
        df = None  # a paper table without results still shows what to run

    if args.paper and df is not None:
        # results of another dataset or model (e.g. the quick digits run) have nothing to compare:
        # say so, rather than print a table of "not run" rows and a figure titled with the paper
        problem = paper.coverage_problem(args.paper, df)
        if problem:
            print(problem, file=sys.stderr)
            return 2

    if df is not None and not df.empty:
        summary = summarize(df)
        if not summary.empty:
            written = tables.write_tables(summary, out, columns=columns)
            print(tables.render(summary, args.format, columns))
            print("tables written: " + ", ".join(str(p) for p in written.values()))
        else:
            print("(no successful trials)")
        failed = tables.failed_list(df)
        if failed:
            print("\n" + failed)
    elif not args.paper:
        print(f"report: no result rows under {', '.join(args.results)}", file=sys.stderr)
        return 2
    else:
        summary = None

    diff = None
    if args.paper:
        dirs = [r for r in args.results if Path(r).exists()]
        diff = paper.paper_diff(args.paper, dirs)
        print("\n" + paper.format_paper_diff(diff, args.format))
        out.mkdir(parents=True, exist_ok=True)
        for fmt in tables.FORMATS:
            (out / f"paper-{args.paper}.{tables.SUFFIX[fmt]}").write_text(paper.format_paper_diff(diff, fmt))
        print(f"paper comparison written: {out}/paper-{args.paper}.{{md,tex,csv}}")

    if args.plot:
        if summary is None or summary.empty:
            print("report: --plot needs at least one successful trial", file=sys.stderr)
            return 2
        pub = paper.published_points(args.paper) if args.paper else None
        title = paper.load_published(args.paper)["title"] if args.paper else None
        if diff is not None and diff["status"].astype(str).str.startswith("recipe differs").any():
            # the hollow published points sit beside trials of another recipe: say so on the figure
            title += ": ours ran another recipe than the paper spec (see the table), not comparable"
        paths = plots.pareto_plot(summary, args.plot, pub, title)
        print("plot written: " + ", ".join(str(p) for p in paths))
    if args.ranks:
        if df is None or df.empty or not (df["status"] == "ok").any():
            print("report: --ranks needs at least one successful trial", file=sys.stderr)
            return 2
        try:
            paths = plots.ranks_plot(df, args.ranks)
        except ValueError as e:
            print(f"report: {e}", file=sys.stderr)
            return 2
        print("ranks plot written: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_report(sys.argv[1:]))
