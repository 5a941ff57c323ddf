"""The specs shipped with the package (``bench/configs/*.yaml``), by name, from any directory:
``rankbench run trp-cifar10-resnet20`` and ``rankbench specs``."""
from __future__ import annotations

from pathlib import Path


def shipped_specs() -> dict[str, Path]:
    """The specs shipped in ``bench/configs`` by name (file name without ``.yaml``), sorted."""
    from importlib import resources

    folder = Path(str(resources.files("rankbench.bench") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def default_spec_path() -> Path:
    """The shipped quick spec, found through the installed package (works from a wheel too)."""
    return shipped_specs()["quick"]


def resolve_spec(ref: str | Path | None) -> Path:
    """The spec file ``ref`` names: None is the quick spec; an existing file is itself; a shipped
    spec's name (``quick``, ``trp-cifar10-resnet20``, with or without ``.yaml``, or as
    ``bench/configs/NAME.yaml``) is its file in the package, from any directory. Anything else
    comes back as a path (reading it fails)."""
    if ref is None:
        return default_spec_path()
    p = Path(ref).expanduser()
    if p.exists():
        return p
    shipped = shipped_specs()
    name = str(ref).removesuffix(".yaml")
    if name in shipped and "/" not in str(ref):
        return shipped[name]
    # the path the paper reports print, bench/configs/NAME.yaml, works outside a checkout too
    if p.parent.as_posix().endswith("bench/configs") and p.stem in shipped:
        return shipped[p.stem]
    return p


def summary(path: Path) -> str:
    """A shipped spec's first comment line (what it runs), or its sweep name."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip().rstrip(":,")
        if line.strip():
            break
    return path.stem
