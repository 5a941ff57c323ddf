"""The layout rules of bench/, methods/ and reports/, read from the source (nothing is imported).

The three folders are installed as one namespace: ``bench/`` is ``rankbench.bench``, ``methods/``
``rankbench.methods``, ``reports/`` ``rankbench.reports`` (docs/CONTRACTS.md, "Packaging").

- Rooms: every module belongs to a room of docs/CONTRACTS.md's map, and imports only from its own
  room and from rooms below it (:data:`ROOMS`, lowest first). Every module is named in the map.
- Imports run downwards only: the import graph has no cycle. Every import counts, wherever it is
  written (module level, inside a function or class, under ``if TYPE_CHECKING:``) and however
  (``import a.b``, ``from a import b`` where ``b`` is a submodule, relative imports, a constant
  ``importlib.import_module("a.b")``): a function-level import defers a cycle, it does not remove
  it. A package's ``__init__`` is the node of the package itself.
- No import of the bare names ``bench``, ``methods``, ``reports``: installed, they do not exist.
- No private (``_underscore``) name crosses modules: neither ``from m import _x`` nor ``m._x``.
- ``methods`` is the bottom layer: from the harness it may import ``rankbench.bench.checks`` only.
- Only the command line (``rankbench.bench.cli``, ``rankbench.bench.__main__``) imports ``reports``.
- Functions are short enough to read at once: at most 80 lines and 10 parameters.
- At most 12 modules directly in ``bench/``; every room's ``__init__`` says what it may import.
- No source file over 500 lines unless its module docstring says it holds one concern (and which).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "reports")
NAMESPACE = "rankbench"
MAX_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 10
MAX_BENCH_MODULES = 12
MAY_IMPORT_REPORTS = {"rankbench.bench.cli", "rankbench.bench.__main__"}
METHODS_MAY_IMPORT_FROM_BENCH = {"rankbench.bench.checks"}
# the rooms, lowest first (docs/CONTRACTS.md's map): a module imports from its own room and the
# rooms before it. A module's room is the longest prefix of its name listed here.
ROOMS = (
    "rankbench.bench.checks", "rankbench.bench.version", "rankbench.bench.trial",
    "rankbench.methods.lowrank", "rankbench.methods.api", "rankbench.methods",
    "rankbench.bench.measure", "rankbench.bench.data", "rankbench.bench.models",
    "rankbench.bench.results", "rankbench.bench.train", "rankbench.bench.preflight",
    "rankbench.bench.spec", "rankbench.bench.running", "rankbench.bench.speed",
    "rankbench.reports", "rankbench.bench",
)


@dataclass
class Module:
    name: str
    path: Path
    rel: str                  # path relative to the root, for messages
    is_package: bool
    tree: ast.Module
    imports: dict[str, int] = field(default_factory=dict)             # module -> first line
    private: list[tuple[int, str]] = field(default_factory=list)      # (line, "m._x")

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def discover(root: Path, packages: tuple[str, ...] = PACKAGES, namespace: str = NAMESPACE) -> dict[str, Module]:
    """Every ``.py`` file under ``root/<package>``, by its installed dotted name (``namespace.``
    before the folder's path)."""
    mods = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join(([namespace] if namespace else []) + parts)
            mods[name] = Module(name, path, str(path.relative_to(root)), is_package,
                                ast.parse(path.read_text(), str(path)))
    return mods


def _known(name: str, mods: dict[str, Module]) -> str | None:
    """``name`` or its longest prefix that is a project module; None for other packages."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in mods:
            return ".".join(parts)
        parts.pop()
    return None


def _absolute(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.package.split(".")
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an ``Attribute``/``Name`` chain, else None."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(names)])


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def scan(mods: dict[str, Module]) -> dict[str, Module]:
    """Fill each module's ``imports`` (project modules it imports) and ``private`` (private names
    of other project modules it uses)."""
    for mod in mods.values():
        aliases: dict[str, str] = {}          # local name -> project module it is bound to

        def edge(target: str | None, line: int) -> None:
            if target and target != mod.name:
                mod.imports.setdefault(target, line)

        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    edge(_known(a.name, mods), node.lineno)
                    if a.asname and a.name in mods:
                        aliases[a.asname] = a.name
                    elif not a.asname:
                        aliases[a.name.split(".")[0]] = a.name.split(".")[0]   # import a.b.c binds a
            elif isinstance(node, ast.ImportFrom):
                src = _absolute(mod, node)
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if sub in mods:                                   # from pkg import submodule
                        edge(sub, node.lineno)
                        aliases[a.asname or a.name] = sub
                        if _private(a.name) and mods[sub].package != mod.package:
                            mod.private.append((node.lineno, sub))
                        continue
                    target = _known(src, mods)
                    edge(target, node.lineno)
                    if target and target != mod.name and _private(a.name):
                        mod.private.append((node.lineno, f"{target}.{a.name}"))
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                fn = _dotted(node.func) or ""
                if fn.rpartition(".")[2] in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                    edge(_known(node.args[0].value, mods), node.lineno)
        for node in ast.walk(mod.tree):                               # m._x on an imported module
            if isinstance(node, ast.Attribute) and _private(node.attr):
                base = _dotted(node.value)
                if base is None:
                    continue
                head, _, rest = base.partition(".")
                target = ".".join(filter(None, [aliases.get(head, ""), rest])) if head in aliases else None
                if target in mods and target != mod.name:
                    mod.private.append((node.lineno, f"{target}.{node.attr}"))
    return mods


def cycles(mods: dict[str, Module], limit: int = 50) -> list[list[str]]:
    """The elementary cycles of the import graph (each once, starting at its smallest module),
    shortest first; at most ``limit``."""
    graph = {m: sorted(t for t in mod.imports if t in mods) for m, mod in mods.items()}
    found: list[list[str]] = []

    def walk(start: str, node: str, path: list[str], on_path: set[str]) -> None:
        for nxt in graph[node]:
            if nxt == start:
                found.append(path[:])
            elif nxt > start and nxt not in on_path and len(found) < 10 * limit:
                on_path.add(nxt)
                path.append(nxt)
                walk(start, nxt, path, on_path)
                path.pop()
                on_path.discard(nxt)

    for start in sorted(graph):
        walk(start, start, [start], {start})
    return sorted(found, key=lambda c: (len(c), c))[:limit]


def describe(cycle: list[str], mods: dict[str, Module]) -> str:
    """``a -> b (a.py:12) -> a (b.py:3)``: each step with the line that imports."""
    steps = [cycle[0]]
    for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        steps.append(f"{b} ({mods[a].rel}:{mods[a].imports[b]})")
    return " -> ".join(steps)


@pytest.fixture(scope="module")
def project() -> dict[str, Module]:
    return scan(discover(ROOT))


def _package(name: str) -> str:
    """``bench``, ``methods`` or ``reports``: the folder a namespaced module name comes from."""
    return name.split(".")[1]


def _where(mod: Module, line: int) -> str:
    return f"{mod.rel}:{line}"


# ---------------------------------------------------------------------------- the rules

def test_the_import_graph_of_bench_methods_and_reports_has_no_cycle(project):
    found = cycles(project)
    assert not found, ("import cycles (each step names the line that imports):\n"
                       + "\n".join("  " + describe(c, project) for c in found))


def test_no_private_name_is_imported_across_modules(project):
    bad = [f"{_where(m, line)}: {m.name} uses {what}" for m in project.values() for line, what in m.private]
    assert not bad, "private names used across modules (make them public or move the code):\n  " + "\n  ".join(bad)


def test_methods_import_nothing_from_bench_but_bench_checks(project):
    bad = [f"{_where(m, line)}: {m.name} imports {t}"
           for m in project.values() if _package(m.name) == "methods"
           for t, line in m.imports.items()
           if _package(t) == "bench" and t not in METHODS_MAY_IMPORT_FROM_BENCH]
    assert not bad, "methods is the bottom layer; from bench it may use rankbench.bench.checks only:\n  " + "\n  ".join(bad)


def test_only_the_command_line_imports_reports(project):
    bad = [f"{_where(m, line)}: {m.name} imports {t}"
           for m in project.values() if _package(m.name) != "reports" and m.name not in MAY_IMPORT_REPORTS
           for t, line in m.imports.items() if _package(t) == "reports"]
    assert not bad, "only rankbench.bench.cli (and rankbench.bench.__main__) may import reports:\n  " + "\n  ".join(bad)


def test_no_source_file_over_500_lines_unless_it_holds_one_concern(project):
    bad = []
    for m in project.values():
        n = len(m.path.read_text().splitlines())
        doc = ast.get_docstring(m.tree) or ""
        if n > MAX_LINES and "one concern" not in " ".join(doc.lower().split()):
            bad.append(f"{m.rel}: {n} lines")
    assert not bad, (f"files over {MAX_LINES} lines whose docstring does not say they hold one concern "
                     "(split them, or say which concern in the docstring):\n  " + "\n  ".join(bad))


def room_of(name: str) -> str:
    """The room of a module: the longest prefix of its name in :data:`ROOMS`."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in ROOMS:
            return ".".join(parts)
        parts.pop()
    raise AssertionError(f"{name} belongs to no room of ROOMS")


def test_rooms_import_only_from_their_own_room_and_the_rooms_below(project):
    bad = []
    for m in project.values():
        mine = ROOMS.index(room_of(m.name))
        for t, line in m.imports.items():
            theirs = room_of(t)
            if ROOMS.index(theirs) > mine:
                bad.append(f"{_where(m, line)}: {m.name} ({room_of(m.name)}) imports {t} ({theirs}), a room above it")
    assert not bad, "imports run downwards between rooms (docs/CONTRACTS.md's map):\n  " + "\n  ".join(bad)


def _python_files() -> list[Path]:
    return sorted(p for d in (*PACKAGES, "tests") for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def test_nothing_imports_the_bare_folder_names_which_do_not_exist_once_installed():
    bad = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not bad, "import rankbench.bench / rankbench.methods / rankbench.reports instead:\n  " + "\n  ".join(bad)


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return len([n for n in names if n not in ("self", "cls")])


def test_no_function_is_longer_than_80_lines_or_takes_more_than_10_parameters(project):
    bad = []
    for m in project.values():
        for node in ast.walk(m.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n_lines, n_params = node.end_lineno - node.lineno + 1, _parameters(node)
                if n_lines > MAX_FUNCTION_LINES or n_params > MAX_PARAMETERS:
                    bad.append(f"{_where(m, node.lineno)}: {node.name}: {n_lines} lines, {n_params} parameters")
    assert not bad, (f"functions over {MAX_FUNCTION_LINES} lines or {MAX_PARAMETERS} parameters (split them into "
                     "phases; group parameters in a config object):\n  " + "\n  ".join(bad))


def test_bench_keeps_at_most_12_modules_beside_its_rooms():
    direct = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert len(direct) <= MAX_BENCH_MODULES, f"{len(direct)} modules directly in bench/: {direct}"


def test_every_room_says_what_it_owns_and_what_it_may_import(project):
    rooms = [m for m in project.values() if m.is_package and m.name in ROOMS]
    assert len(rooms) >= 8
    bad = [m.rel for m in rooms if "may import" not in (ast.get_docstring(m.tree) or "").lower()
           and "imports nothing" not in (ast.get_docstring(m.tree) or "").lower()
           and "imports run downwards" not in (ast.get_docstring(m.tree) or "").lower()]
    assert not bad, "room docstrings that do not say what the room may import:\n  " + "\n  ".join(bad)


def _named_in_map(text: str) -> set[str]:
    """Module paths named in CONTRACTS.md's layout block: ``folder/name.py`` in full, or a bare
    ``name.py`` listed after the last ``folder/`` named before it."""
    block = text.split("## Layout", 1)[1].split("```")[1]
    named, folder = set(), ""
    for token in re.findall(r"[\w/<>]+/|[\w/]+\.py", block):
        if "/" in token:
            folder = token.rsplit("/", 1)[0] + "/"
            if token.endswith(".py"):
                named.add(token)
        else:
            named.add(folder + token)
    return named


def test_every_module_is_named_in_the_contracts_map(project):
    named = _named_in_map((ROOT / "docs" / "CONTRACTS.md").read_text())
    missing = sorted(m.rel for m in project.values() if m.path.name != "__init__.py" and m.rel not in named)
    assert not missing, "modules missing from docs/CONTRACTS.md's map:\n  " + "\n  ".join(missing)


def test_pyproject_installs_every_package_folder_under_the_namespace(project):
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {f"{NAMESPACE}.{p}": p for p in PACKAGES}
    assert sorted(cfg["packages"]) == sorted(m.name for m in project.values() if m.is_package)


# ---------------------------------------------------------------------------- the scanner itself

def _tree(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return scan(discover(root, ("pa", "pb"), namespace=""))


def test_the_scanner_sees_every_kind_of_import_and_names_the_cycles(tmp_path):
    mods = _tree(tmp_path, {
        "pa/__init__.py": "from pa.reg import register\n",
        "pa/reg.py": "def register():\n    from pa import builtin\n",            # function level
        "pa/builtin.py": "from pa import one, two  # noqa\n",                   # submodules by name
        "pa/one.py": "from .reg import register\n",                             # relative
        "pa/two.py": "import pa.reg as r\nx = r._table\n",                      # private attribute
        "pa/sub/__init__.py": "from ..one import register\n",                   # relative, two levels
        "pb/__init__.py": "",
        "pb/data.py": "from pb.shards import _scan\n",                          # private name
        "pb/shards.py": "import importlib\nimportlib.import_module('pb.data')\n",  # dynamic
        "pb/leaf.py": "import os\nfrom pa import register\n",                   # a name of pa/__init__
    })
    assert mods["pa.sub"].is_package and mods["pa.sub"].imports == {"pa.one": 1}
    assert mods["pa.builtin"].imports == {"pa.one": 1, "pa.two": 1}
    assert mods["pb.leaf"].imports == {"pa": 2}
    found = [" -> ".join(c) for c in cycles(mods)]
    assert found == ["pb.data -> pb.shards", "pa.builtin -> pa.one -> pa.reg", "pa.builtin -> pa.two -> pa.reg"]
    assert describe(cycles(mods)[0], mods) == "pb.data -> pb.shards (pb/data.py:1) -> pb.data (pb/shards.py:2)"
    assert mods["pb.data"].private == [(1, "pb.shards._scan")]
    assert mods["pa.two"].private == [(2, "pa.reg._table")]
    assert not any(m.private for n, m in mods.items() if n not in ("pb.data", "pa.two"))
