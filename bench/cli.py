"""The ``rankbench`` command (also ``python -m rankbench.bench``).

    rankbench run [SPEC] [KEY=VALUE ...] [--address ADDR] [--results|--storage DIR_OR_URI] [--max-concurrent N]
                  [--max-trials N] [--mlflow URI]
    rankbench methods
    rankbench check-method NAME [--check CHECK ...]   (rankbench.methods.api.conformance)
    rankbench specs
    rankbench show [SPEC] [KEY=VALUE ...] [--max-trials N]
    rankbench export TRIAL_OR_PATH [--format torch|onnx] [--out FILE] [--results DIR]
    rankbench report ...        (rankbench.reports.cli)
    rankbench speed ...         (rankbench.bench.speed)

User errors (bad spec, locked or incompatible results folder, resources no node can hold) print
one line ``error: <field>: <value>: <problem>; accepted: <...>`` (``rankbench.bench.checks``) and exit 2,
with no traceback. ``run`` exits 0 (all ok), 1 (some trial failed), 3 (Ray raised in the driver),
130 (Ctrl-C) or 143 (SIGTERM); on 3, 130 and 143 it first prints what finished and the command
that resumes (README, "Failure modes").

This is the package's top module: the only one in ``bench`` that imports ``reports`` (which
itself imports ``rankbench.bench.results.filesystem`` and ``rankbench.bench.results.row``).
"""
from __future__ import annotations

import argparse
import inspect
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rankbench.bench import __version__
from rankbench.bench.checks import PATH_QUOTE, UserError, bad

# exit statuses (README, "Failure modes")
EXIT_TRIALS_FAILED = 1     # the sweep finished; some trials failed (their rows say why)
EXIT_USER_ERROR = 2        # bad input: nothing ran
EXIT_SWEEP_STOPPED = 3     # the sweep itself stopped (Ray's GCS or raylet died): finished rows are kept
EXIT_INTERRUPTED = 130     # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143      # SIGTERM (128 + SIGTERM), e.g. a batch scheduler's time limit
SUPERVISE_ENV = "RANKBENCH_SUPERVISE"   # "0": run the sweep in the command's own process


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the driver like Ctrl-C so the sweep stops the same way."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from rankbench.bench.results.filesystem import StorageURIError

    # SpecError and StoreError are UserErrors
    return (UserError, StorageURIError)


SPEC_HELP = ("a YAML spec file, or a shipped spec's name (rankbench specs lists them); default: quick. "
             "Relative data.root and model.pretrained paths resolve against the current directory")
OVERRIDE_HELP = "dotted overrides read as YAML, e.g. train.epochs=3 seeds=[0] resources.gpus=0.5"
MAX_TRIALS_HELP = ("refuse a spec whose grids expand to more than N trials (default 10000), counted before "
                   "they are expanded")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rankbench", description="Benchmark low-rank compression methods.")
    p.add_argument("--version", action="version", version=f"rankbench {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="{run,plan,methods,check-method,specs,show,export,report,speed}")
    r = sub.add_parser("run", help="run a spec's trials (default: the shipped quick spec)")
    r.add_argument("spec", nargs="?", help=SPEC_HELP)
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    r.add_argument("--address", default=None,
                   help="Ray cluster address, e.g. auto or ray://head:10001 (default: $RAY_ADDRESS, else a new local Ray)")
    r.add_argument("--results", "--storage", dest="results", default="results", metavar="DIR_OR_URI",
                   help="where rows, checkpoints, logs and Ray's state go: a local or NFS folder, or a "
                        "URI pyarrow opens (s3://bucket/dir, gs://..., file:///dir); default ./results")
    r.add_argument("--max-concurrent", type=int, default=None, help="at most N trials at once")
    r.add_argument("--keep-old-code", action="store_true",
                   help="keep finished rows made by other code of their method (default: run those trials again)")
    r.add_argument("--max-trials", type=int, default=None, metavar="N", help=MAX_TRIALS_HELP)
    r.add_argument("--wait-for-nodes", type=float, default=None, metavar="SECONDS",
                   help="on a cluster (--address), how long to wait for nodes that can hold the spec's "
                        "resources to join (default: $RANKBENCH_WAIT_FOR_NODES, else 300)")
    r.add_argument("--preflight-only", action="store_true",
                   help="a rehearsal: make every check a run makes before training (on a cluster: every node "
                        "sees the results, runs this rankbench, has the methods and paths), then stop")
    r.add_argument("--mlflow", default=None, metavar="URI",
                   help="also log every trial's epochs to this MLflow tracking URI (needs rankbench[mlflow]); "
                        "TensorBoard files are always written under <results>/<sweep>/tensorboard")
    sub.add_parser("methods", help="list registered methods and their parameters")
    c = sub.add_parser("check-method", help="run the conformance suite against a registered method or plugin")
    c.add_argument("name", help="the method's registered name (see rankbench methods)")
    c.add_argument("--check", action="append", default=None, metavar="CHECK",
                   help="run only this check (repeatable; default: all)")
    sub.add_parser("specs", help="list the shipped specs (run them by name from any directory)")
    s = sub.add_parser("show", help="list the trials a spec expands to, without running them")
    s.add_argument("spec", nargs="?", help=SPEC_HELP)
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDE_HELP)
    s.add_argument("--results", "--storage", dest="results", default="results", metavar="DIR_OR_URI",
                   help="mark trials already done in this folder or storage URI")
    s.add_argument("--max-trials", type=int, default=None, metavar="N", help=MAX_TRIALS_HELP)
    e = sub.add_parser("export", help="export a trial's compressed model (torch.export or ONNX), checked "
                                      "against the eager model")
    e.add_argument("model", metavar="TRIAL_OR_PATH",
                   help="a trial id, its row (<id>.json) or its model file (<id>.model.pt)")
    e.add_argument("--format", default="torch", help="torch (torch.export, .pt2; default) or onnx "
                   "(needs pip install 'rankbench[onnx]')")
    e.add_argument("--out", default=None, help="output file (default: beside the model file)")
    e.add_argument("--results", default="results", help="where a trial id is looked up (default ./results)")
    sub.add_parser("report", help="tables / paper comparison / plots from results (rankbench.reports.cli)",
                   add_help=False)
    sub.add_parser("plan", help="what a sweep will cost before it runs: measured step times -> device-hours, "
                                "makespan on N GPUs (rankbench.bench.speed.plan)", add_help=False)
    sub.add_parser("speed", help="training-step, projection and latency micro-benchmarks (rankbench.bench.speed)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``rankbench`` command. Output piped into a reader that stops early (``| head``) ends
    the command quietly, as other command-line tools do, not with an error."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # point stdout at /dev/null so that the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    if argv is None and sys.argv[1:2] == ["run"] and os.environ.get(SUPERVISE_ENV, "1") != "0" \
            and hasattr(os, "fork"):
        return _supervise(sys.argv[1:])
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return _report(argv[1:])
    if argv and argv[0] in ("speed", "plan"):
        return _speed(argv)
    args = _parser().parse_args(argv)
    if args.cmd is None:
        _parser().print_help()
        return EXIT_USER_ERROR
    try:
        if args.cmd in ("run", "show"):
            spec, overrides = _spec_and_overrides(args.spec, args.overrides)
            if args.max_trials is not None and args.max_trials < 1:
                raise bad("--max-trials", args.max_trials, "an integer >= 1")
            if args.cmd == "run":
                return cmd_run(spec, args.results, args.address, args.max_concurrent, overrides,
                               wait_for_nodes=args.wait_for_nodes, mlflow=args.mlflow, max_trials=args.max_trials,
                               keep_old_code=args.keep_old_code, preflight_only=args.preflight_only)
            return cmd_show(spec, args.results, overrides, max_trials=args.max_trials)
        if args.cmd == "methods":
            return cmd_methods()
        if args.cmd == "check-method":
            return cmd_check_method(args.name, args.check)
        if args.cmd == "specs":
            return cmd_specs()
        if args.cmd == "export":
            return cmd_export(args.model, args.format, args.out, args.results)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        raise                                   # main() ends quietly
    except OSError as e:
        # disk full, results folder removed or read-only while the sweep ran; the store names
        # the file it could not write, so an error without a file name is not about the results
        if e.filename:
            msg = bad("results", str(e.filename), "a writable folder with free space", e.strerror or str(e), PATH_QUOTE)
            print(f"error: {msg}", file=sys.stderr)
        else:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        # only a run has trials to keep and resume; any other command simply stopped
        then = ("finished trials are kept; run the same command again to resume" if args.cmd == "run"
                else "nothing was written")
        print(f"{what}: {then}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    return EXIT_USER_ERROR


def _supervise(argv: list[str]) -> int:
    """``rankbench run`` from the command line: the sweep runs in a forked child, this process
    waits for it. Ray's core can end its driver process from C++ (its GCS lost for 60 s), where
    no Python handler runs; the child then dies without reporting its status, and this process
    still prints what finished and the resume command (exit 3). Ctrl-C reaches the child through
    the process group (ignored here); SIGTERM sent here is passed on; the child dies with this
    process (PR_SET_PDEATHSIG), so killing the command kills the sweep."""
    from rankbench.bench.results.store import DRIVER_PID_ENV

    parent = os.getpid()
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                   # the child: the sweep itself
        os.close(r)
        _die_with_parent(parent)
        os.environ[DRIVER_PID_ENV] = str(parent)   # the results folder's lock names the command's pid
        code = 1
        try:
            code = main(argv)
        except SystemExit as e:                    # argparse's usage error (2), --help (0): its own status
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(w, bytes([int(code) & 0xFF]))
            os.close(w)
        sys.exit(code)                             # atexit handlers (Ray's shutdown) run
    os.close(w)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signal.SIGTERM))
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        reported = os.read(r, 1)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        os.close(r)
    if reported:
        return reported[0]
    how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"status {os.WEXITSTATUS(status)}")
    try:
        args = _parser().parse_args(argv)
        from rankbench.bench.spec.parse import load_spec

        spec, overrides = _spec_and_overrides(args.spec, args.overrides)
        # the sweep the child ran: its spec as the overrides changed it (their sweep name included)
        sweep = load_spec(_spec_path(spec), check=False, overrides=overrides, max_trials=args.max_trials)
        resume = "rankbench " + " ".join(shlex.quote(a) for a in argv)
        _stopped_summary(sweep, args.results, RuntimeError(
            f"the sweep's process ended with {how} before reporting (Ray's core ends it when its GCS is lost)"),
            resume)
    except Exception as e:  # noqa: BLE001 (the summary is a courtesy; the exit status says it all)
        print(f"the sweep's process ended with {how}; run the same command again to resume ({e})", file=sys.stderr)
    return EXIT_SWEEP_STOPPED


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                     # it died before the request took hold
        os._exit(1)


def _spec_path(spec: str | None) -> Path:
    from rankbench.bench.spec.parse import resolve_spec

    return resolve_spec(spec)


def _spec_and_overrides(spec: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """``rankbench run train.epochs=1``: a first word that is an override means the default spec."""
    from rankbench.bench.spec.overrides import is_override

    if spec is not None and is_override(spec):
        return None, [spec, *overrides]
    return spec, list(overrides)


def cmd_specs() -> int:
    from rankbench.bench.spec.shipped import shipped_specs, summary

    specs = shipped_specs()
    width = max(map(len, specs))
    for name, path in specs.items():
        print(f"{name:{width}}  {summary(path)}")
    print(f"\nrun one by name from any directory: rankbench run NAME [KEY=VALUE ...]; files in {path.parent}")
    return 0


def cmd_methods() -> int:
    """Every registered method (plugins whose import failed are skipped with a warning on stderr),
    its one-line description and its parameters; a choice parameter shows its accepted values."""
    from rankbench.methods.api.registry import available, choices, get_method, parameters

    for name in available():
        cls = get_method(name)
        # the class's own docstring (getdoc would fall back to Method's), else its module's
        doc = (inspect.cleandoc(cls.__dict__.get("__doc__") or "") or inspect.getdoc(sys.modules[cls.__module__]) or "")
        doc = doc.split("\n")[0]
        kind = "starts from the dense baseline" if cls.starts_from_baseline else "trains from scratch"
        print(f"{name}: {doc} ({kind}; {cls.__module__})")
        accepted = choices(name)
        for pname, p in parameters(name).items():
            if pname in accepted:
                ann = ": " + "|".join(str(v) for v in accepted[pname])
            else:
                ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
                ann = "" if ann in ("", "_empty") else f": {ann}"
            default = "(required)" if p.default is inspect.Parameter.empty else f"= {p.default!r}"
            print(f"    {pname}{ann} {default}")
    return 0


def cmd_check_method(name: str, only: list[str] | None = None) -> int:
    """The conformance suite (``rankbench.methods.api.conformance``) against one method: a line per check;
    exit 0 if all pass, 1 if any fails, 2 for an unknown method or check."""
    from rankbench.bench.checks import unknown
    from rankbench.methods.api.conformance import CHECKS, run
    from rankbench.methods.api.registry import available

    names = available()
    if name not in names:
        raise unknown("method", name, names, "unknown method")
    for c in only or []:
        if c not in CHECKS:
            raise unknown("--check", c, CHECKS)
    results = run(name, tuple(only) if only else CHECKS)
    for r in results:
        print(r, flush=True)
    failed = [r.check for r in results if not r.ok]
    print(f"{name}: {len(results) - len(failed)} of {len(results)} checks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def method_name(method: str, label: str | None) -> str:
    """A method as the user wrote it: ``trp (TRP+Nu)`` where the spec gave a ``label:``."""
    return f"{method} ({label})" if label and label != method else method


def failed_line(tid: str, row: dict | None, trial: Any, logs: Path) -> str:
    """One line for a failed trial: its method (and label), variant, seed and error, or where
    its log is when it wrote no row."""
    if row:
        name = method_name(str(row.get("method")), row.get("label"))
        return f"failed {tid} {name} [{row.get('variant')}] seed {row.get('seed')}: {row.get('error')}"
    name = method_name(trial.method, trial.display_label)
    rest = trial.label.removeprefix(trial.method)
    return f"failed {tid} {name}{rest}: no result written (see {logs / (tid + '.log')})"


def cmd_show(spec: str | None, results: str = "results", overrides: list[str] | None = None,
             max_trials: int | None = None) -> int:
    from rankbench.bench.spec.parse import file_problems, load_spec
    from rankbench.bench.results.store import Store

    # a preview: data or weights not there yet are a warning here (run refuses them)
    sweep = load_spec(_spec_path(spec), overrides=overrides or (), check_files=False, max_trials=max_trials)
    store = Store(results, sweep.name)
    print(f"sweep {sweep.name} ({sweep.source}): {len(sweep.trials)} trials")
    names = {t.id: method_name(t.method, t.display_label) for t in sweep.trials}
    width = max([10, *map(len, names.values())])
    print(f"{'id':12}  {'status':7}  {'method':{width}}  {'model':8}  {'data':9}  seed  variant")
    for t in sweep.trials:
        row = store.read_result(t.id)
        status = row.get("status", "?") if row else "todo"
        print(f"{t.id:12}  {status:7}  {names[t.id]:{width}}  {t.model:8}  {str(t.data_cfg.get('name')):9}  "
              f"{t.seed:4}  {t.variant}")
    problems = file_problems(sweep)
    for problem in problems:
        print(f"warning: {problem} (rankbench run refuses this spec until it is fixed)", file=sys.stderr)
    if problems:
        print(f"note: relative data.root and model.pretrained paths resolve against the current directory "
              f"({Path.cwd()})", file=sys.stderr)
    return 0


def cmd_export(model: str, fmt: str, out: str | None, results: str) -> int:
    from rankbench.bench.results.export import export_compressed

    done = export_compressed(model, fmt, out, results)
    print(f"{done.path} ({done.format}): checked against the eager model on random batches, "
          f"max |diff| {done.max_abs_diff:.2g} (outputs up to {done.scale:.3g})")
    return 0


def cmd_run(spec: str | None, results: str, address: str | None, max_concurrent: int | None,
            overrides: list[str] | None = None, wait_for_nodes: float | None = None,
            mlflow: str | None = None, max_trials: int | None = None, keep_old_code: bool = False,
            preflight_only: bool = False) -> int:
    from rankbench.bench.spec.parse import load_spec
    from rankbench.bench.running.sweep import rehearse, run_sweep, set_ray_env

    set_ray_env()
    if max_concurrent is not None and max_concurrent < 1:
        raise bad("--max-concurrent", max_concurrent, "an integer >= 1")
    if wait_for_nodes is not None and not wait_for_nodes >= 0:
        raise bad("--wait-for-nodes", wait_for_nodes, "a number of seconds >= 0")
    from rankbench.bench.running.tracking import check_mlflow, open_mlflow

    check_mlflow(mlflow)                            # a missing extra is refused before Ray starts
    t0 = time.monotonic()
    # every input error (overrides included) surfaces here, before Ray
    sweep = load_spec(_spec_path(spec), overrides=overrides or (), max_trials=max_trials)
    if preflight_only:
        rehearse(sweep, results, address, wait_for_nodes, out=lambda s: print(s, flush=True))
        return 0
    mlflow_target = open_mlflow(mlflow, sweep.name)   # the store opened and written once, or one line
    from rankbench.bench.results.store import Store

    store_dir = Store(results, sweep.name).dir    # a Path, or a RemotePath for a storage URI
    resume = "rankbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["run"] \
        else f"rankbench run {shlex.quote(str(_spec_path(spec)))} --results {shlex.quote(results)}"
    old = signal.getsignal(signal.SIGTERM)

    got_term: list[int] = []

    def _term(signum: int, frame: object) -> None:
        got_term.append(signum)        # Tune may re-raise it as a plain KeyboardInterrupt
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _term)
    try:
        summary = run_sweep(sweep, results, address=address, max_concurrent=max_concurrent,
                            out=lambda s: print(s, flush=True), wait_for_nodes=wait_for_nodes, mlflow=mlflow_target,
                            keep_old_code=keep_old_code)
    except (KeyboardInterrupt, Exception) as e:  # noqa: BLE001
        if isinstance(e, _user_errors()) or isinstance(e, OSError):
            raise                                  # bad input or an unwritable folder: one line (main)
        if got_term and not isinstance(e, Terminated):
            e = Terminated()
        _stopped_summary(sweep, results, e, resume)
        if isinstance(e, KeyboardInterrupt):
            return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
        return EXIT_SWEEP_STOPPED
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old)
    print()
    from rankbench.reports.tables import quick_table

    print(quick_table(store_dir, [t.id for t in sweep.trials]))   # this spec's trials, not every row there
    print()
    n_failed = len(summary.failed)
    print(f"{summary.total} trials: {summary.total - n_failed} ok, {n_failed} failed "
          f"({summary.skipped} were already done) in {time.monotonic() - t0:.0f}s")
    print(f"rows: {store_dir / 'trials'}/<trial_id>.json   table: {summary.csv}   logs: {store_dir / 'logs'}")
    by_id = {t.id: t for t in sweep.trials}
    for tid, r in list(summary.failed.items())[:10]:
        print(failed_line(tid, r, by_id[tid], store_dir / "logs"))
    return EXIT_TRIALS_FAILED if n_failed else 0


def _stopped_summary(sweep: object, results: str, e: BaseException, resume: str) -> None:
    """What finished before the sweep stopped, and the command that resumes it (stderr)."""
    from rankbench.bench.running.sweep import stopped_lines

    if isinstance(e, Terminated):
        why = "terminated (SIGTERM)"
    elif isinstance(e, KeyboardInterrupt):
        why = "interrupted"
    else:
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        why = f"stopped by a fault of Ray or the driver ({type(e).__name__}: {detail})"
    for line in stopped_lines(sweep, results, why, resume):
        print(line, file=sys.stderr)


def _report(argv: list[str]) -> int:
    try:
        from rankbench.reports.cli import main_report
    except ImportError as e:
        print(f"error: {bad('report', 'rankbench.reports.cli', 'an install with reports/', f'not available ({e})')}",
              file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return int(main_report(argv) or 0)
    except _user_errors() as e:            # a bogus storage URI, a bad value
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:                   # --out / --plot into a read-only folder, onto a file...
        where = e.filename or (argv[-1] if argv else "")
        msg = bad("report", str(where), "a writable folder (--out) and file name (--plot)",
                  e.strerror or type(e).__name__, PATH_QUOTE)
        print(f"error: {msg}", file=sys.stderr)
    return EXIT_USER_ERROR


def _speed(argv: list[str]) -> int:
    """``rankbench speed`` and ``rankbench plan``: imported here, since ``rankbench run`` needs neither."""
    import importlib

    main_cmd = importlib.import_module("rankbench.bench.speed" + (".plan" if argv[0] == "plan" else "")).main
    try:
        return int(main_cmd(argv[1:]) or 0)
    except (ValueError, *_user_errors()) as e:   # a bad --model or value: one line, as every other user error
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
