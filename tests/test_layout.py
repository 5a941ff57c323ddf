"""The layout rules of bench/, methods/ and reports/, read from the source (nothing is imported).

- Imports run downwards only: the import graph has no cycle. Every import counts, wherever it is
  written (module level, inside a function or class, under ``if TYPE_CHECKING:``) and however
  (``import a.b``, ``from a import b`` where ``b`` is a submodule, relative imports, a constant
  ``importlib.import_module("a.b")``): a function-level import defers a cycle, it does not remove
  it. A package's ``__init__`` is the node of the package itself.
- No private (``_underscore``) name crosses modules: neither ``from m import _x`` nor ``m._x``.
- ``methods`` is the bottom layer: from ``bench`` it may import ``bench.checks`` only.
- Only the command line (``bench.cli``, ``bench.__main__``) imports ``reports``.
- No source file over 500 lines unless its module docstring says it holds one concern (and which).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "reports")
MAX_LINES = 500
MAY_IMPORT_REPORTS = {"bench.cli", "bench.__main__"}
METHODS_MAY_IMPORT_FROM_BENCH = {"bench.checks"}


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


def discover(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Module]:
    """Every ``.py`` file under ``root/<package>``, by dotted module name."""
    mods = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join(parts)
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
                    elif not a.asname and a.name.split(".")[0] in mods:
                        aliases[a.name.split(".")[0]] = a.name.split(".")[0]
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
           for m in project.values() if m.name.split(".")[0] == "methods"
           for t, line in m.imports.items()
           if t.split(".")[0] == "bench" and t not in METHODS_MAY_IMPORT_FROM_BENCH]
    assert not bad, "methods is the bottom layer; from bench it may use bench.checks only:\n  " + "\n  ".join(bad)


def test_only_the_command_line_imports_reports(project):
    bad = [f"{_where(m, line)}: {m.name} imports {t}"
           for m in project.values() if m.name.split(".")[0] != "reports" and m.name not in MAY_IMPORT_REPORTS
           for t, line in m.imports.items() if t.split(".")[0] == "reports"]
    assert not bad, "only bench.cli (and bench.__main__) may import reports:\n  " + "\n  ".join(bad)


def test_no_source_file_over_500_lines_unless_it_holds_one_concern(project):
    bad = []
    for m in project.values():
        n = len(m.path.read_text().splitlines())
        doc = ast.get_docstring(m.tree) or ""
        if n > MAX_LINES and "one concern" not in " ".join(doc.lower().split()):
            bad.append(f"{m.rel}: {n} lines")
    assert not bad, (f"files over {MAX_LINES} lines whose docstring does not say they hold one concern "
                     "(split them, or say which concern in the docstring):\n  " + "\n  ".join(bad))


# ---------------------------------------------------------------------------- the scanner itself

def _tree(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return scan(discover(root, ("pa", "pb")))


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
