"""The ``rankbench`` command (also ``python -m bench``).

    rankbench run [SPEC] [--address ADDR] [--results|--storage DIR_OR_URI] [--max-concurrent N]
    rankbench methods
    rankbench show SPEC
    rankbench export TRIAL_OR_PATH [--format torch|onnx] [--out FILE] [--results DIR]
    rankbench report ...        (reports.cli)
    rankbench speed ...         (bench.speed)

User errors (bad spec, locked or incompatible results folder) print one line
``error: <field>: <value>: <problem>; accepted: <...>`` (``bench.checks``) and exit 2, with no
traceback.

This is the package's top module: the only one in ``bench`` that imports ``reports`` (which
itself imports ``bench.fs`` and ``bench.row``).
"""
from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

from bench import __version__
from bench.checks import PATH_QUOTE, UserError, bad

EXIT_USER_ERROR = 2
EXIT_TRIALS_FAILED = 1


def _user_errors() -> tuple[type[BaseException], ...]:
    from bench.fs import StorageURIError

    # SpecError and StoreError are UserErrors
    return (UserError, StorageURIError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankbench", description="Benchmark low-rank compression methods.")
    p.add_argument("--version", action="version", version=f"rankbench {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="{run,methods,show,specs,export,report,speed}")
    r = sub.add_parser("run", help="run a spec's trials (default: the shipped quick spec)")
    r.add_argument("spec", nargs="?", help="YAML spec (default: bench/configs/quick.yaml)")
    r.add_argument("--address", default=None,
                   help="Ray cluster address, e.g. auto or ray://head:10001 (default: $RAY_ADDRESS, else a new local Ray)")
    r.add_argument("--results", "--storage", dest="results", default="results", metavar="DIR_OR_URI",
                   help="where rows, checkpoints, logs and Ray's state go: a local or NFS folder, or a "
                        "URI pyarrow opens (s3://bucket/dir, gs://..., file:///dir); default ./results")
    r.add_argument("--max-concurrent", type=int, default=None, help="at most N trials at once")
    sub.add_parser("methods", help="list registered methods and their parameters")
    s = sub.add_parser("show", help="list the trials a spec expands to, without running them")
    s.add_argument("spec", nargs="?", help="YAML spec (default: bench/configs/quick.yaml)")
    s.add_argument("--results", "--storage", dest="results", default="results", metavar="DIR_OR_URI",
                   help="mark trials already done in this folder or storage URI")
    e = sub.add_parser("export", help="export a trial's compressed model (torch.export or ONNX), checked "
                                      "against the eager model")
    e.add_argument("model", metavar="TRIAL_OR_PATH",
                   help="a trial id, its row (<id>.json) or its model file (<id>.model.pt)")
    e.add_argument("--format", default="torch", help="torch (torch.export, .pt2; default) or onnx "
                   "(needs pip install 'rankbench[onnx]')")
    e.add_argument("--out", default=None, help="output file (default: beside the model file)")
    e.add_argument("--results", default="results", help="where a trial id is looked up (default ./results)")
    sub.add_parser("report", help="tables / paper comparison / plots from results (reports.cli)",
                   add_help=False)
    sub.add_parser("speed", help="training-step, projection and latency micro-benchmarks (bench.speed)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return _report(argv[1:])
    if argv and argv[0] == "speed":
        return _speed(argv[1:])
    args = _parser().parse_args(argv)
    if args.cmd is None:
        _parser().print_help()
        return EXIT_USER_ERROR
    try:
        if args.cmd == "run":
            return cmd_run(args.spec, args.results, args.address, args.max_concurrent)
        if args.cmd == "methods":
            return cmd_methods()
        if args.cmd == "show":
            return cmd_show(args.spec, args.results)
        if args.cmd == "export":
            return cmd_export(args.model, args.format, args.out, args.results)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:
        # disk full, results folder removed or read-only while the sweep ran; the store names
        # the file it could not write, so an error without a file name is not about the results
        if e.filename:
            msg = bad("results", str(e.filename), "a writable folder with free space", e.strerror or str(e), PATH_QUOTE)
            print(f"error: {msg}", file=sys.stderr)
        else:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished trials are kept; run the same command again to resume", file=sys.stderr)
        return 130
    return EXIT_USER_ERROR


def _spec_path(spec: str | None) -> Path:
    from bench.spec import default_spec_path

    return Path(spec) if spec else default_spec_path()


def cmd_methods() -> int:
    from methods.registry import available, get_method, parameters

    for name in available():
        cls = get_method(name)
        # the class's own docstring (getdoc would fall back to Method's), else its module's
        doc = (inspect.cleandoc(cls.__dict__.get("__doc__") or "") or inspect.getdoc(sys.modules[cls.__module__]) or "")
        doc = doc.split("\n")[0]
        kind = "starts from the dense baseline" if cls.starts_from_baseline else "trains from scratch"
        print(f"{name}: {doc} ({kind}; {cls.__module__})")
        for pname, p in parameters(name).items():
            ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            ann = "" if ann in ("", "_empty") else f": {ann}"
            default = "(required)" if p.default is inspect.Parameter.empty else f"= {p.default!r}"
            print(f"    {pname}{ann} {default}")
    return 0


def cmd_show(spec: str | None, results: str = "results") -> int:
    from bench.spec import load_spec
    from bench.store import Store

    sweep = load_spec(_spec_path(spec))
    store = Store(results, sweep.name)
    print(f"sweep {sweep.name} ({sweep.source}): {len(sweep.trials)} trials")
    print(f"{'id':12}  {'status':7}  {'method':10}  {'model':8}  {'data':9}  seed  variant")
    for t in sweep.trials:
        row = store.read_result(t.id)
        status = row.get("status", "?") if row else "todo"
        print(f"{t.id:12}  {status:7}  {t.method:10}  {t.model:8}  {str(t.data_cfg.get('name')):9}  "
              f"{t.seed:4}  {t.variant}")
    return 0


def cmd_export(model: str, fmt: str, out: str | None, results: str) -> int:
    from bench.export import export_compressed

    done = export_compressed(model, fmt, out, results)
    print(f"{done.path} ({done.format}): checked against the eager model on random batches, "
          f"max |diff| {done.max_abs_diff:.2g} (outputs up to {done.scale:.3g})")
    return 0


def cmd_run(spec: str | None, results: str, address: str | None, max_concurrent: int | None) -> int:
    from bench.spec import load_spec
    from bench.sweep import run_sweep, set_ray_env

    set_ray_env()
    if max_concurrent is not None and max_concurrent < 1:
        raise bad("--max-concurrent", max_concurrent, "an integer >= 1")
    t0 = time.monotonic()
    sweep = load_spec(_spec_path(spec))            # every input error surfaces here, before Ray
    summary = run_sweep(sweep, results, address=address, max_concurrent=max_concurrent,
                        out=lambda s: print(s, flush=True))
    from bench.store import Store

    store_dir = Store(results, sweep.name).dir    # a Path, or a RemotePath for a storage URI
    print()
    from reports.tables import quick_table

    print(quick_table(store_dir, [t.id for t in sweep.trials]))   # this spec's trials, not every row there
    print()
    n_failed = len(summary.failed)
    print(f"{summary.total} trials: {summary.total - n_failed} ok, {n_failed} failed "
          f"({summary.skipped} were already done) in {time.monotonic() - t0:.0f}s")
    print(f"rows: {store_dir / 'trials'}/<trial_id>.json   table: {summary.csv}   logs: {store_dir / 'logs'}")
    by_id = {t.id: t for t in sweep.trials}
    for tid, r in list(summary.failed.items())[:10]:
        if r:
            print(f"failed {tid} {r['method']} [{r.get('variant')}] seed {r.get('seed')}: {r.get('error')}")
        else:
            print(f"failed {tid} {by_id[tid].label}: no result written (see {store_dir / 'logs' / (tid + '.log')})")
    return EXIT_TRIALS_FAILED if n_failed else 0


def _report(argv: list[str]) -> int:
    try:
        from reports.cli import main_report
    except ImportError as e:
        print(f"error: {bad('report', 'reports.cli', 'an install with reports/', f'not available ({e})')}",
              file=sys.stderr)
        return EXIT_USER_ERROR
    return int(main_report(argv) or 0)


def _speed(argv: list[str]) -> int:
    from bench.speed import main as main_speed  # imported here: `rankbench run` does not need it

    try:
        return int(main_speed(argv) or 0)
    except ValueError as e:  # a bad --model: one line, as every other user error
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
