"""Whether the cluster can ever run a sweep's trials, checked before any trial is queued.

Ray queues a request no node can hold and waits for it forever, silently: ``resources: {gpus: 1}``
on a machine without a GPU, ``{cpus: 100}`` on a laptop, ``{cpus: 4, workers: 2}`` on 2 cores.
Here each distinct ``resources`` of a sweep is compared with the nodes: a single-process trial
needs one node holding all of it; a data-parallel trial needs its ``workers`` shares (each
``cpus / workers`` CPUs and ``gpus / workers`` GPUs) placed on the nodes together.

A local Ray (no ``--address``) is this machine and nothing joins it: what does not fit is refused
at once, before Ray starts. On a cluster, nodes may still join (an autoscaler): the driver prints
what is pending and polls the nodes for up to ``wait_s`` seconds (``--wait-for-nodes``, or
``RANKBENCH_WAIT_FOR_NODES``; default :data:`DEFAULT_WAIT_S`), then refuses.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable

from rankbench.bench.checks import UserError, bad
from rankbench.bench.trial import per_worker, workers_for

DEFAULT_WAIT_S = 300.0
WAIT_ENV = "RANKBENCH_WAIT_FOR_NODES"
POLL_S = 5.0
EPS = 1e-9


def wait_seconds(given: float | None = None) -> float:
    """``given`` (the command line), else ``$RANKBENCH_WAIT_FOR_NODES``, else the default."""
    if given is not None:
        return float(given)
    text = os.environ.get(WAIT_ENV)
    if text is None:
        return DEFAULT_WAIT_S
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0:
        raise bad(WAIT_ENV, text, "a number of seconds >= 0")
    return v


def local_nodes() -> list[dict[str, float]]:
    """This machine as one node, as a fresh local Ray counts it (every core, every visible GPU)."""
    import torch

    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]


def ray_nodes() -> list[dict[str, float]]:
    """The live nodes of the connected Ray cluster and their total resources."""
    import ray

    return [{k: float(v) for k, v in n.get("Resources", {}).items()} for n in ray.nodes() if n.get("Alive")]


def _need(resources: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """(processes, what each process needs)."""
    n = workers_for(resources)
    if n > 1:
        return n, per_worker(resources)
    return 1, {"CPU": float(resources.get("cpus", 1)), "GPU": float(resources.get("gpus", 0) or 0)}


def fits(resources: dict[str, Any], nodes: list[dict[str, float]]) -> bool:
    """Whether ``nodes`` (their totals) can hold one trial asking for ``resources``."""
    n, each = _need(resources)
    placed = 0
    for node in nodes:
        k = min((int(node.get(r, 0.0) / v + EPS) if v > 0 else n) for r, v in each.items())
        placed += max(0, k)
    return placed >= n


def _describe(nodes: list[dict[str, float]]) -> str:
    if not nodes:
        return "no live node"
    parts = [f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes[:4]]
    more = f" and {len(nodes) - 4} more" if len(nodes) > 4 else ""
    return f"{len(nodes)} node{'s' if len(nodes) > 1 else ''}: " + "; ".join(parts) + more


def _request(resources: dict[str, Any]) -> str:
    n, each = _need(resources)
    if n > 1:
        return f"{n} workers of {each['CPU']:g} CPU, {each['GPU']:g} GPU"
    return f"{each['CPU']:g} CPU, {each['GPU']:g} GPU in one process"


def unfit(trials: Iterable[Any], nodes: list[dict[str, float]]) -> list[dict[str, Any]]:
    """The distinct ``resources`` of ``trials`` that ``nodes`` cannot hold."""
    out: list[dict[str, Any]] = []
    for t in trials:
        r = t.resources_cfg
        if r not in out and not fits(r, nodes):
            out.append(r)
    return out


def refusal(r: dict[str, Any], nodes: list[dict[str, float]], where: str) -> UserError:
    """The one-line error for a request ``r`` no set of ``nodes`` can hold."""
    shown = {k: r[k] for k in ("cpus", "gpus", "workers") if k in r}
    return bad("resources", shown, "what the cluster's nodes can hold (lower resources.cpus / gpus / workers, "
               "or run on a cluster with --address)",
               f"needs {_request(r)}; {where} has {_describe(nodes)}")


def check_local(trials: Iterable[Any]) -> None:
    """Refuse, before Ray starts, what this machine alone can never run."""
    nodes = local_nodes()
    bad_r = unfit(trials, nodes)
    if bad_r:
        raise refusal(bad_r[0], nodes, "this machine")


def check_cluster(trials: list[Any], wait_s: float, out: Callable[[str], None],
                  nodes: Callable[[], list[dict[str, float]]] = ray_nodes,
                  sleep: Callable[[float], None] = time.sleep) -> None:
    """Against the connected cluster: wait up to ``wait_s`` for nodes to join, then refuse."""
    deadline = time.monotonic() + wait_s
    said = None
    while True:
        now = nodes()
        bad_r = unfit(trials, now)
        if not bad_r:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise refusal(bad_r[0], now, f"the cluster (after waiting {wait_s:g}s for nodes to join)")
        msg = (f"pending: {_request(bad_r[0])} fits no node yet ({_describe(now)}); waiting up to "
               f"{left:.0f}s more for nodes to join (--wait-for-nodes)")
        if msg.split(";")[0] != said:
            out(msg)
            said = msg.split(";")[0]
        sleep(min(POLL_S, max(0.0, left)))
