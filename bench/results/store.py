"""A sweep's folder: which file goes where, and how each is written so that none is ever
half-written (the storage it sits on, a path or a URI, is ``rankbench.bench.results.filesystem``).

Layout of ``<results>/<sweep>/``::

    FORMAT                      {"format": 1, ...}: a folder from an incompatible version is refused
    .lock                       flock held by the driver: two sweeps on one folder refuse clearly
    trials/<trial_id>.json      one Result row per trial (atomic: complete or absent)
    checkpoints/<trial_id>/     epoch.pt (resume point), baseline.pt (dense weights for reuse)
    logs/<trial_id>.log         the trial's progress lines (Ray workers do not print to the terminal)
    results.csv                 every row, flattened, rewritten at the end of a sweep
    ray/                        Ray Tune's (and Ray Train's) own experiment state

``results_root`` is a local or NFS path, or a URI pyarrow opens (s3://, gs://, file://...):
``rankbench.bench.results.filesystem.location`` turns it into a ``Path`` or a ``RemotePath`` with the same API, and every
write below is all-or-nothing on either (see ``rankbench.bench.results.filesystem``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from rankbench.bench.checks import PATH_QUOTE, UserError, bad
from rankbench.bench.results.filesystem import Location, RemotePath, location

FORMAT_VERSION = 1
# set by the `rankbench run` supervisor (rankbench.bench.cli) in the process it runs the sweep in
DRIVER_PID_ENV = "RANKBENCH_DRIVER_PID"


class StoreError(UserError):
    """A results folder that cannot be used (locked, incompatible, unwritable). One line."""


def _refused(folder: Location, problem: str, accepted: str) -> StoreError:
    """The one-line error (``rankbench.bench.checks`` format) for a results folder that cannot be used."""
    return StoreError(str(bad("results", str(folder), accepted, problem, PATH_QUOTE)))


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Location, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a part.

    The temp file lives in the same directory so that ``os.replace`` is a rename on one file system.
    A ``RemotePath`` writes through its file system (temp + move, or one upload on object stores).
    """
    if isinstance(path, RemotePath):
        path.write_bytes(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; the file gets the mode open() would give it, so a team reads
        # rows and checkpoints on shared storage as the umask says
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename != str(path):
            # a failed write (ENOSPC, EIO) names no file, a failed replace names the temp file:
            # name the result that was not written, so the one-line error says where
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    # fsync the directory so the rename itself survives a power loss
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_json(path: Path, obj: Any) -> None:
    # allow_nan=False: a NaN metric must become null upstream, never invalid JSON
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False, default=str)
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def previous(checkpoint: Location) -> Location:
    """Where the checkpoint before ``checkpoint`` is kept (``epoch.pt`` -> ``epoch.prev.pt``)."""
    return checkpoint.with_name(f"{checkpoint.stem}.prev{checkpoint.suffix}")


def rotate_and_save(obj: Any, checkpoint: Location) -> None:
    """Save ``obj`` to ``checkpoint``, keeping the one it replaces as ``previous(checkpoint)``: a
    checkpoint found unreadable later (a damaged disk, a hand edit) still leaves the state one
    epoch before it. On a local folder ``checkpoint`` exists at every moment, so a run killed
    half-way through this call (Ctrl-C, SIGKILL) resumes from its last epoch, not the one before:
    the old file is hard-linked (copied where links are not supported) to its new name and the new
    one replaces it by rename. On other storage the old one is simply replaced."""
    if isinstance(checkpoint, Path) and checkpoint.exists():
        prev = previous(checkpoint)
        tmp = prev.with_name(f".{prev.name}.tmp")   # one writer per trial folder at a time
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)                           # left by a run killed right here
        try:
            os.link(checkpoint, tmp)
        except OSError:                              # a file system without hard links
            shutil.copyfile(checkpoint, tmp)
        os.replace(tmp, prev)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)   # still there when prev already was this file (rename(2) then does nothing)
    atomic_torch_save(obj, checkpoint)


def set_aside(path: Location) -> Location:
    """Rename an unreadable file to ``<name>.bad`` (``.bad2``, ... if taken), so no later run trips
    on it again and it stays there to look at; returns the new path."""
    n = 1
    while True:
        new = path.with_name(f"{path.name}.bad{n if n > 1 else ''}")
        if not new.exists():
            break
        n += 1
    if isinstance(path, RemotePath):
        path.fs.move(path.path, new.path)
    else:
        os.replace(path, new)
    return new


def local_folder(where: Location) -> Path | None:
    """The local path of ``where``: itself, or the path of a ``file://`` URI; None on other storage."""
    if not isinstance(where, RemotePath):
        return Path(where)
    return Path(where.path) if where.fs.type_name == "local" else None


class Store:
    """The files of one sweep under ``<results_root>/<sweep>``."""

    def __init__(self, results_root: Location | str, sweep: str):
        self.root = location(results_root)
        self.sweep = sweep
        self.dir = self.root / sweep

    # paths -------------------------------------------------------------------------------
    @property
    def trials_dir(self) -> Path:
        return self.dir / "trials"

    def trial_path(self, trial_id: str) -> Path:
        return self.trials_dir / f"{trial_id}.json"

    def checkpoint_dir(self, trial_id: str) -> Path:
        return self.dir / "checkpoints" / trial_id

    def epoch_checkpoint(self, trial_id: str) -> Path:
        return self.checkpoint_dir(trial_id) / "epoch.pt"

    def baseline_weights(self, trial_id: str) -> Path:
        return self.checkpoint_dir(trial_id) / "baseline.pt"

    def log_path(self, trial_id: str) -> Path:
        return self.dir / "logs" / f"{trial_id}.log"

    @property
    def csv_path(self) -> Path:
        return self.dir / "results.csv"

    @property
    def ray_dir(self) -> Path:
        return self.dir / "ray"

    @property
    def format_path(self) -> Path:
        return self.dir / "FORMAT"

    # setup -------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the folder (or check an existing one was written by a compatible version)."""
        from rankbench.bench.version import __version__

        try:
            self.trials_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _refused(self.dir, f"cannot create ({e.strerror})", "a writable folder") from None
        if isinstance(self.dir, Path) and not os.access(self.dir, os.W_OK):
            raise _refused(self.dir, "not writable", "a writable folder")
        if self.format_path.exists():
            self._check_format()
        elif any(self.trials_dir.iterdir()):
            raise _refused(self.dir, "has trial files but no FORMAT file",
                           f"a folder written by rankbench {__version__}, or a new --results folder")
        else:
            try:
                atomic_write_json(self.format_path, {"format": FORMAT_VERSION, "rankbench": __version__})
            except OSError as e:
                raise _refused(self.dir, f"cannot write ({e.strerror})", "a writable folder") from None

    def _check_format(self) -> None:
        """The folder's FORMAT file is rankbench's, of this format; else the one line saying which
        it is: unreadable, not a FORMAT file rankbench writes (garbage), or another format number."""
        accepted = f"format {FORMAT_VERSION}, or a new --results folder"
        try:
            text = self.format_path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            text = None
        except OSError as e:
            raise _refused(self.dir, f"its FORMAT file cannot be read ({e.strerror or type(e).__name__})",
                           accepted) from None
        try:
            fmt = json.loads(text) if text is not None else None
        except ValueError:
            text = None
        if text is None or not isinstance(fmt, dict):
            raise _refused(self.dir, 'its FORMAT file is not a FORMAT file rankbench writes (not JSON {"format": N}: '
                           "damaged, or not rankbench's)", accepted)
        fmt = fmt.get("format")
        if isinstance(fmt, bool) or not isinstance(fmt, int):
            raise _refused(self.dir, f"its FORMAT file holds no format number (format: {str(fmt)[:40]})",
                           accepted)
        if fmt != FORMAT_VERSION:
            raise _refused(self.dir, f"format {fmt} (written by another rankbench version)", accepted)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the sweep folder; a second driver is refused at once.

        flock is released by the kernel when the process dies, so a killed driver never
        leaves a stale lock behind.
        """
        import fcntl

        folder = local_folder(self.dir)
        if folder is None:
            # object stores offer no lock (and pyarrow no atomic create-if-absent): keeping one
            # driver per storage URI is the user's part. Rows are per trial and atomic, so a
            # second driver could at worst run a trial twice, never corrupt a row.
            self.dir.mkdir(parents=True, exist_ok=True)
            yield
            return
        # the lock file is in the folder itself, found through its local path: `--results /r` and
        # `--storage file:///r` (or a symlink to /r) lock one file, so one of the two is refused
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".lock", "a+")
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise _refused(self.dir, f"in use by another sweep (pid {holder})",
                               "one sweep per results folder at a time") from None
            f.seek(0)
            f.truncate()
            f.write(os.environ.get(DRIVER_PID_ENV) or str(os.getpid()))   # the pid the user started
            f.flush()
            yield
        finally:
            f.close()

    # rows --------------------------------------------------------------------------------
    def read_result(self, trial_id: str) -> dict | None:
        """The trial's Result row, or None when absent (or unreadable: treated as not run)."""
        p = self.trial_path(trial_id)
        try:
            row = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        return row if isinstance(row, dict) else None   # a file edited into a list or a number

    def is_done(self, trial_id: str) -> bool:
        """A row with ``status: ok`` and every field of its JSON type: a row damaged by hand (a
        field of the wrong type) is not a result, and the trial runs again, replacing it."""
        from rankbench.bench.results.row import problems

        row = self.read_result(trial_id)
        return bool(row) and row.get("status") == "ok" and not any("; accepted:" in p for p in problems(row))

    def write_result(self, row: dict) -> Path:
        p = self.trial_path(row["trial_id"])
        atomic_write_json(p, row)
        return p

    def results(self) -> list[dict]:
        rows = []
        if self.trials_dir.exists():
            for p in sorted(self.trials_dir.glob("*.json")):
                row = self.read_result(p.stem)
                if row is not None:
                    rows.append(row)
        return rows

    def write_csv(self, trial_ids: list[str] | None = None) -> Path:
        """Flatten every row (``rankbench.bench.results.row.flatten``: dict fields become ``params.x``, ``env.torch``...,
        lists JSON text) into results.csv."""
        import pandas as pd

        from rankbench.bench.results.row import flatten

        rows = self.results()
        if trial_ids is not None:
            keep = set(trial_ids)
            rows = [r for r in rows if r.get("trial_id") in keep]
        df = pd.DataFrame.from_records([flatten(r) for r in rows]) if rows else pd.DataFrame()
        atomic_write_bytes(self.csv_path, df.to_csv(index=False).encode())
        return self.csv_path
