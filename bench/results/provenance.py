"""The code that made a row: rankbench's version and commit, and the method's own code.

A row outlives the code that wrote it. Each row carries ``code``:

- ``rankbench``: the version, and where rankbench runs from a git checkout its commit, whether the
  checkout was dirty, and a hash of the changed files' contents (so two dirty states differ);
- ``method``: the distribution that provides the trial's method (name and version: ``rankbench``
  for the built-ins, the plugin's package otherwise) and ``source_sha256``, a hash of the source
  files of the package the method's module belongs to (every ``.py`` below it): what a re-run
  compares, so an edited plugin, or an edited built-in, re-runs its trials.

May import: the top-level modules, ``rankbench.methods``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

HASH_CHARS = 16


def _sha(chunks: list[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(hashlib.sha256(c).digest())
    return h.hexdigest()[:HASH_CHARS]


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def rankbench_identity() -> dict[str, Any]:
    """rankbench's version; its commit, dirty flag and changed files' hash from a git checkout."""
    from rankbench.bench.version import __version__

    out: dict[str, Any] = {"version": __version__}
    root = Path(__file__).resolve().parents[2]            # bench/results/ -> the checkout (or site-packages)
    commit = _git(root, "rev-parse", "HEAD") if (root / ".git").exists() else None
    if commit:
        status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "bench", "methods", "reports") or ""
        changed = sorted(line[3:] for line in status.splitlines() if line.strip())
        out.update({"commit": commit.strip(), "dirty": bool(changed)})
        if changed:
            out["changes_sha256"] = _sha([p.encode() + b"\0" + _read(root / p) for p in changed])
    return out


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _source_files(module: str) -> tuple[Path, list[Path]]:
    """The files whose code is the method's: for a built-in its module and the machinery every
    method shares (``methods/lowrank``, ``methods/api``); for a plugin every ``.py`` of its
    top-level package (or its one module). Returns (the folder they are named from, the files)."""
    mod = sys.modules.get(module) or importlib.import_module(module)
    here = Path(mod.__file__).resolve()
    if module.startswith("rankbench.methods."):
        base = Path(sys.modules["rankbench.methods"].__path__[0]).resolve()
        shared = [f for d in ("lowrank", "api") for f in sorted((base / d).rglob("*.py"))]
        return base, [here, *shared]
    top = sys.modules.get(module.split(".")[0]) or importlib.import_module(module.split(".")[0])
    if hasattr(top, "__path__"):
        base = Path(list(top.__path__)[0]).resolve()
        return base, sorted(base.rglob("*.py"))
    return here.parent, [here]


def _distribution(module: str) -> tuple[str | None, str | None]:
    """The installed distribution providing ``module`` and its version (rankbench's own version
    for the built-ins: an editable install's metadata can lag behind the checkout)."""
    if module.startswith("rankbench."):
        from rankbench.bench.version import __version__

        return "rankbench", __version__
    top = module.split(".")[0]
    names = metadata.packages_distributions().get(top) or []
    if not names:       # a distribution without a file list: the one whose entry point names the module
        for dist in metadata.distributions():
            if any(ep.group == "rankbench.methods" and ep.value.split(":")[0].split(".")[0] == top
                   for ep in dist.entry_points):
                return dist.metadata["Name"], dist.version
        return None, None
    try:
        return names[0], metadata.version(names[0])
    except metadata.PackageNotFoundError:
        return names[0], None


@functools.lru_cache(maxsize=None)
def method_identity(name: str) -> dict[str, Any]:
    """The distribution providing method ``name`` and a hash of its package's source files."""
    from rankbench.methods.api.registry import get_method

    module = get_method(name).__module__
    dist, version = _distribution(module)
    base, files = _source_files(module)
    source = _sha([str(f.relative_to(base)).encode() + b"\0" + _read(f) for f in files if "__pycache__" not in f.parts])
    return {"name": name, "module": module, "distribution": dist, "version": version, "source_sha256": source}


def code_identity(method: str) -> dict[str, Any]:
    """The row's ``code``: rankbench's identity and the method's."""
    return {"rankbench": rankbench_identity(), "method": method_identity(method)}


def same_method_code(row: dict[str, Any], method: str) -> bool:
    """Whether ``row`` was made by the method code installed now (rows older than ``code``: yes,
    nothing to compare)."""
    old = ((row.get("code") or {}).get("method") or {}).get("source_sha256")
    return old is None or old == method_identity(method)["source_sha256"]


def describe_code(code: dict[str, Any] | None) -> str:
    """A short name of a row's code: ``rankbench 0.2.0@1a2b3c4d(+dirty) / trp ab12cd34``."""
    if not code:
        return "unrecorded"
    rb, m = code.get("rankbench") or {}, code.get("method") or {}
    at = f"@{rb['commit'][:8]}" if rb.get("commit") else ""
    dirty = f"+{rb.get('changes_sha256', '')[:8]}" if rb.get("dirty") else ""
    dist = m.get("distribution") or "?"
    return f"rankbench {rb.get('version', '?')}{at}{dirty} / {m.get('name', '?')} ({dist} {m.get('version') or '?'}, " \
           f"source {str(m.get('source_sha256') or '?')[:8]})"
