"""Whether every node of a cluster can run the sweep's trials, checked before any trial trains.

On a cluster (``--address``) a node that cannot see the results folder trains its trials and then
loses them; one that runs another rankbench, lacks a method's plugin or cannot reach the data
fails after its first epochs, or later. So before the first trial the driver writes a marker
file into the sweep's folder and runs one tiny task on every alive node (:func:`check_nodes`):
the node must see that marker (the same folder, not a node-local one of the same name), write
beside it, import the same rankbench version and every method the spec uses, and see every
``data.root`` and ``model.pretrained``. The first node that fails is named in one line (IP and
Ray node id), with what it cannot do and the fix; exit 2 before any trial trains. A node that
joins later runs the same check (:func:`node_problems`) when its first trial starts there, and
that trial fails at once with the same line.

May import: the top-level modules, ``results``, ``rankbench.methods``.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from rankbench.bench.checks import UserError
from rankbench.bench.results.filesystem import is_uri, location, resolve_against

MARKER = ".preflight"
NODE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class NodeNeeds:
    """What a node must have to run a sweep's trials (it crosses to the node as a plain object)."""

    marker: str                      # the marker file in the sweep's folder (a path or a URI)
    token: str                       # what the driver wrote into it
    version: str                     # rankbench's version on the driver
    methods: tuple[str, ...]         # every method name the sweep's trials use
    paths: tuple[str, ...]           # data roots and pretrained files, as the trials resolve them


def write_marker(sweep_dir: Any) -> tuple[str, str]:
    """Write a fresh marker into the sweep's folder (a Path or RemotePath); (its location, token)."""
    token = uuid.uuid4().hex
    marker = sweep_dir / MARKER
    marker.write_text(token)
    return str(marker), token


def needs_of(trials: Any, marker: str, token: str, base_dir: str) -> NodeNeeds:
    """The needs of ``trials`` (relative paths resolved against ``base_dir``, as the trials do)."""
    from rankbench.bench.version import __version__

    paths = {resolve_against(p, base_dir) for t in trials for p in (t.data_cfg.get("root"), t.model_cfg.get("pretrained"))
             if isinstance(p, str) and p}
    return NodeNeeds(marker, token, __version__, tuple(sorted({t.method for t in trials})), tuple(sorted(paths)))


def node_problems(needs: NodeNeeds) -> list[tuple[str, str]]:
    """What this node cannot do of ``needs``: (problem, fix) pairs; [] when it can run the trials."""
    out = _results_problems(needs)
    from rankbench.bench.version import __version__

    if __version__ != needs.version:
        out.append((f"runs rankbench {__version__}, the driver {needs.version}",
                    "install the driver's rankbench on every node"))
    out += _method_problems(needs.methods)
    for p in needs.paths:
        if not location(p if is_uri(p) else os.path.expanduser(p)).exists():
            out.append((f"cannot see {p}", "the same path on every node (a shared mount) or a URI every node reaches"))
    return out


def _results_problems(needs: NodeNeeds) -> list[tuple[str, str]]:
    fix = "one results folder every node sees at the same path (an NFS mount) or an s3:// / gs:// URI (--results)"
    marker = location(needs.marker)
    try:
        seen = marker.read_text() if marker.exists() else None
    except OSError:
        seen = None
    if seen != needs.token:
        what = "holds another sweep's marker: a folder of its own at that path" if seen else "the marker is not there"
        return [(f"cannot see the results folder {marker.parent} ({what})", fix)]
    probe = marker.parent / f"{MARKER}-{uuid.uuid4().hex}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return [(f"cannot write to the results folder {marker.parent} ({e.strerror or type(e).__name__})", fix)]
    return []


def _method_problems(methods: tuple[str, ...]) -> list[tuple[str, str]]:
    from rankbench.methods.api.registry import available, skipped

    have, broken = set(available()), skipped()
    out = []
    for m in methods:
        if m in broken:
            out.append((f"cannot import method {m!r}'s plugin ({broken[m]})", "reinstall that package on the node"))
        elif m not in have:
            out.append((f"has no method {m!r}", "pip install the package that provides it on every node"))
    return out


def describe(node_ip: str, node_id: str, problems: list[tuple[str, str]]) -> UserError:
    """The one line for a node that cannot run the trials: its first problem and its fix."""
    problem, fix = problems[0]
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return UserError(f"node {node_ip} (Ray node {node_id[:12]}): {problem}{more}; accepted: {fix}")


def check_nodes(needs: NodeNeeds, timeout: float = NODE_TIMEOUT_S) -> int:
    """Run :func:`node_problems` on every alive node of the connected Ray cluster; raise the line
    of the first node that fails (or does not answer within ``timeout``). Returns the nodes checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    task = ray.remote(num_cpus=0, max_retries=0)(node_problems)
    refs = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(needs):
            n for n in nodes}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    for ref in ready:
        try:
            problems = ray.get(ref)
        except Exception as e:  # noqa: BLE001 (the check itself could not run there: no rankbench to import)
            detail = (str(e).strip().splitlines() or [type(e).__name__])[-1][:160]
            problems = [(f"cannot run rankbench's check ({detail})", "install the driver's rankbench on every node")]
        if problems:
            n = refs[ref]
            raise describe(n.get("NodeManagerAddress", "?"), n["NodeID"], problems)
    if late:
        n = refs[late[0]]
        raise describe(n.get("NodeManagerAddress", "?"), n["NodeID"],
                       [(f"did not answer the preflight within {timeout:g} s", "a node whose raylet and workers run")])
    return len(nodes)
