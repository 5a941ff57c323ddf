"""Storage locations: a path to a local (or NFS-mounted) folder, or any URI pyarrow opens (s3://,
gs://, hdfs://, file://...), behind one small path type. What goes where inside a sweep's folder
is ``rankbench.bench.results.store``.

``location(text)`` gives a ``pathlib.Path`` for a plain path (atomic rename and
flock, as for any local folder) and a ``RemotePath`` for a URI. ``RemotePath`` implements the part of the pathlib API the
harness uses (``/``, ``parent``, ``name``, ``stem``, ``exists``, ``is_file``, ``is_dir``, ``mkdir``,
``iterdir``, ``glob``, ``read_bytes``/``read_text``, ``write_bytes``/``write_text``, ``unlink``,
``rmdir``), so ``rankbench.bench.results.store``, ``rankbench.bench.running.run`` and ``reports`` read and write through it unchanged.
It deliberately has no ``__fspath__``: an ``open()`` that would silently write a local file named
``s3:/...`` fails loudly instead.

Writes are all-or-nothing on every file system: where the file system can rename (local, HDFS),
a write goes to a temp file next to the target and is then moved over it; object stores (S3, GCS,
Azure) have no atomic rename, but publish an object only when its upload completes, so a direct
write is already complete-or-absent there.
"""
from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any, Iterator, Union

# file systems whose move is a rename (atomic); on the others a move is copy + delete
_RENAMING = ("local", "hdfs", "mock")


class StorageURIError(ValueError):
    """A storage string that is neither a path nor a URI pyarrow can open. One line."""


def is_uri(text: str | os.PathLike) -> bool:
    return isinstance(text, str) and "://" in text


def resolve_against(path: Any, base_dir: str | os.PathLike) -> Any:
    """A spec's path (``data.root``, ``model.pretrained``) as the trials read it: a relative one
    taken from ``base_dir`` (where ``rankbench run`` started; Ray workers run elsewhere); an
    absolute or ``~`` path, a URI, or anything but a non-empty string, as it is."""
    if isinstance(path, str) and path and not is_uri(path) and not Path(path).expanduser().is_absolute():
        return str(Path(base_dir) / Path(path).expanduser())
    return path


class RemotePath:
    """A file or folder on a pyarrow file system, addressed like a ``pathlib.Path``."""

    __slots__ = ("fs", "path", "prefix", "query")

    def __init__(self, fs: Any, path: str, prefix: str, query: str = ""):
        self.fs = fs
        self.path = path.rstrip("/") or "/"
        self.prefix = prefix          # what goes before ``path`` in the URI: "s3://", "file://"
        self.query = query            # "?region=..." kept so str(self) opens the same store again

    # naming ------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.prefix}{self.path}{self.query}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.prefix, self.path, self.query) == (
            other.prefix, other.path, other.query)

    def __hash__(self) -> int:
        return hash((self.prefix, self.path, self.query))

    def __truediv__(self, name: str | os.PathLike) -> "RemotePath":
        return RemotePath(self.fs, posixpath.join(self.path, str(name)), self.prefix, self.query)

    def joinpath(self, *names: str) -> "RemotePath":
        p = self
        for n in names:
            p = p / n
        return p

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        n = self.name
        i = n.rfind(".")
        return n[:i] if i > 0 else n

    @property
    def suffix(self) -> str:
        n = self.name
        i = n.rfind(".")
        return n[i:] if i > 0 else ""

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.fs, posixpath.dirname(self.path) or self.path, self.prefix, self.query)

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def resolve(self) -> "RemotePath":
        return self          # a URI is already absolute

    absolute = resolve

    # queries -----------------------------------------------------------------------------
    def _type(self) -> Any:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        from pyarrow.fs import FileType

        return self._type() != FileType.NotFound

    def is_file(self) -> bool:
        from pyarrow.fs import FileType

        return self._type() == FileType.File

    def is_dir(self) -> bool:
        from pyarrow.fs import FileType

        return self._type() == FileType.Directory

    def iterdir(self) -> Iterator["RemotePath"]:
        from pyarrow.fs import FileSelector

        if not self.is_dir():
            raise FileNotFoundError(f"{self}: no such folder")
        for info in self.fs.get_file_info(FileSelector(self.path, recursive=False)):
            yield RemotePath(self.fs, info.path, self.prefix, self.query)

    def glob(self, pattern: str) -> Iterator["RemotePath"]:
        """Shell-style ``pattern`` relative to this folder, one level per ``/`` (no ``**``)."""
        level = [self]
        for part in pattern.split("/"):
            nxt = []
            for d in level:
                if not d.is_dir():
                    continue
                nxt.extend(c for c in d.iterdir() if fnmatch.fnmatchcase(c.name, part))
            level = nxt
        yield from sorted(level, key=lambda p: p.path)

    def __lt__(self, other: "RemotePath") -> bool:   # sorted() of paths, as with pathlib
        return self.path < other.path

    # reads -------------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        if not self.is_file():
            raise FileNotFoundError(f"{self}: no such file")
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    # writes ------------------------------------------------------------------------------
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if self.exists():
            if exist_ok and self.is_dir():
                return
            raise FileExistsError(f"{self}: exists")
        self.fs.create_dir(self.path, recursive=parents)

    def _renames(self) -> bool:
        fs = self.fs
        while fs.type_name == "subtree":        # SubTreeFileSystem: ask the one underneath
            fs = fs.base_fs
        return fs.type_name in _RENAMING

    def write_bytes(self, data: bytes) -> int:
        """All-or-nothing: temp file + move where moves are renames, else one upload."""
        if not self._renames():
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return len(data)
        self.fs.create_dir(self.parent.path, recursive=True)   # as the local write does
        tmp = self.parent / f".{self.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.fs.open_output_stream(tmp.path) as f:
                f.write(data)
            self.fs.move(tmp.path, self.path)
        except BaseException:
            try:
                self.fs.delete_file(tmp.path)
            except OSError:
                pass
            raise
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not self.is_file():
            if missing_ok:
                return
            raise FileNotFoundError(f"{self}: no such file")
        self.fs.delete_file(self.path)

    def rmdir(self) -> None:
        """Remove an empty folder (OSError when it holds anything, as ``Path.rmdir``)."""
        if not self.is_dir():
            raise FileNotFoundError(f"{self}: no such folder")
        if next(self.iterdir(), None) is not None:
            raise OSError(39, "Directory not empty", str(self))
        self.fs.delete_dir(self.path)


Location = Union[Path, RemotePath]


def location(where: str | os.PathLike | RemotePath) -> Location:
    """A plain path -> ``Path`` (local or NFS); a URI -> ``RemotePath`` on the pyarrow file system
    it names. Raises ``StorageURIError`` naming the URI and what is accepted."""
    if isinstance(where, (Path, RemotePath)):
        return where
    text = os.fspath(where)
    if not is_uri(text):
        return Path(text).expanduser()
    import pyarrow.fs as pafs

    base, _, query = text.partition("?")
    accepted = ("a local or NFS path, or a URI pyarrow opens (s3://bucket/dir, gs://bucket/dir, "
                "hdfs://host/dir, file:///dir)")
    try:
        fs, path = _with_timeout(text, lambda: _open_and_probe(pafs, text))
    except (ValueError, OSError, ImportError) as e:   # pyarrow's ArrowInvalid is a ValueError
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageURIError(f"storage: {text[:PATH_QUOTE]!r}: {msg[:300]}; accepted: {accepted}") from None
    # the URI up to the path pyarrow found: "s3://" for s3://bucket/key, "hdfs://host:8020" for hdfs
    stripped = base.rstrip("/")
    prefix = stripped[: len(stripped) - len(path.rstrip("/"))] if path and stripped.endswith(path.rstrip("/")) \
        else base.split("://", 1)[0] + "://"
    return RemotePath(fs, path or "/", prefix, f"?{query}" if query else "")


STORAGE_TIMEOUT_ENV = "RANKBENCH_STORAGE_TIMEOUT"
STORAGE_TIMEOUT_S = 30.0
PATH_QUOTE = 4096
_probed: set[str] = set()      # URIs that answered once in this process: not probed again


def _open_and_probe(pafs: Any, text: str) -> tuple[Any, str]:
    """The file system of ``text`` and its path, after one request to it (on object stores the
    first request is where a missing network or credentials show)."""
    fs, path = pafs.FileSystem.from_uri(text)
    if fs.type_name != "local" and text not in _probed:
        fs.get_file_info(path or "/")
        _probed.add(text)
    return fs, path


def _with_timeout(text: str, fn: Any) -> Any:
    """``fn()`` in a helper thread, given up after ``$RANKBENCH_STORAGE_TIMEOUT`` seconds (default
    30): a storage URI with no network behind it would otherwise hang for minutes. The wait is in
    short slices, so Ctrl-C stops it at once."""
    import threading
    import time

    try:
        limit = float(os.environ.get(STORAGE_TIMEOUT_ENV, STORAGE_TIMEOUT_S))
    except ValueError:
        limit = STORAGE_TIMEOUT_S
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed to the caller's thread)
            box["error"] = e

    t = threading.Thread(target=run, name="storage-probe", daemon=True)
    t.start()
    deadline = time.monotonic() + limit
    while t.is_alive() and time.monotonic() < deadline:
        t.join(0.1)
    if t.is_alive():
        raise TimeoutError(f"no answer within {limit:g}s (no network, or no credentials?; "
                           f"${STORAGE_TIMEOUT_ENV} sets the wait)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def ray_storage(where: Location) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Tune / Ray Train's RunConfig."""
    if isinstance(where, RemotePath):
        return where.path, where.fs
    return str(Path(where).resolve()), None


def read_bytes_io(path: Location) -> Any:
    """A readable binary file for ``torch.load``: the file itself locally, a buffer otherwise."""
    if isinstance(path, RemotePath):
        return io.BytesIO(path.read_bytes())
    return open(path, "rb")


class _RemoteAppend:
    """Append-only text log on a file system without appends (object stores): the whole file
    is re-uploaded after each write. Logs get a few lines per epoch, so this stays cheap."""

    def __init__(self, path: RemotePath):
        self.path = path
        self.text = path.read_text() if path.is_file() else ""   # a resumed trial keeps its log

    def write(self, s: str) -> int:
        self.text += s
        self.path.write_text(self.text)
        return len(s)

    def flush(self) -> None:
        pass

    def __enter__(self) -> "_RemoteAppend":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def open_append(path: Location) -> Any:
    """A line-buffered text file opened for appending (a context manager)."""
    if isinstance(path, RemotePath):
        return _RemoteAppend(path)
    return open(path, "a", buffering=1)
