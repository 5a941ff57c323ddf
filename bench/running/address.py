"""Where the Ray cluster is: ``--address`` checked before Ray connects.

Its form (``auto``, ``local``, ``HOST:PORT``, ``ray://HOST:PORT``), and that a Ray cluster answers
there (a gRPC server behind the port, found without connecting Ray: ``ray.init`` would spend a
minute retrying and print a screen of warnings). ``rankbench.bench.running.sweep`` calls these
before ``ray.init``.
"""
from __future__ import annotations

import os
import re
import socket

from rankbench.bench.checks import bad

ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-_]*):([0-9]{1,5})$")


def _importable(module: str) -> bool:
    """Whether ``module`` can be found without importing it (a finder that refuses it counts as not)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_address(address: str) -> None:
    """``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT`` (Ray Client); else one line, before
    Ray prints a screen of warnings and a traceback for it."""
    accepted = "auto, local, HOST:PORT (a cluster's GCS) or ray://HOST:PORT (Ray Client, needs ray[client])"
    if address in ("auto", "local"):
        return
    m = ADDRESS.match(address)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise bad("--address", address, accepted)
    if m.group(1):
        missing = [mod for mod in ("grpc",) if not _importable(mod)]
        if missing:
            raise bad("--address", address, accepted,
                      f"Ray Client needs {', '.join(missing)}: pip install 'ray[client]'")


# what --address accepts once its form is right
RUNNING_CLUSTER = "the address of a running Ray cluster (ray status there prints it)"
ADDRESS_TIMEOUT_S = 5.0   # a cluster's head answers a TCP connection within this, or is not there
# Ray's GCS and its Ray Client server are both gRPC servers: to a client's HTTP/2 connection
# preface (here with an empty SETTINGS frame) they answer with their own SETTINGS frame first
# (RFC 9113, section 3.4). A dashboard, a web server or anything else answers otherwise or not at all.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
H2_SETTINGS = 4           # the frame type in byte 3 of a frame's 9-byte header


def _not_grpc(sock: socket.socket, timeout: float) -> str | None:
    """None if the server on ``sock`` answers an HTTP/2 preface as a gRPC server does; else why not."""
    sock.settimeout(timeout)
    head = b""
    try:
        sock.sendall(H2_PREFACE)
        while len(head) < 9:          # a frame header; TCP may deliver it in pieces
            more = sock.recv(9 - len(head))
            if not more:
                break
            head += more
    except socket.timeout:
        if not head:
            return f"it accepts connections but does not answer as a Ray cluster (gRPC) within {timeout:g} s"
    except OSError:               # reset or broken pipe: it hung up, as the empty reply below
        head = b""
    if len(head) >= 4 and head[3] == H2_SETTINGS:
        return None
    if not head:
        return "it closed the connection without answering as a Ray cluster (gRPC)"
    if head.startswith((b"HTTP/", b"<")):
        return (f"it answers HTTP/1 ({head!r}...), not gRPC: a dashboard or web port? (a cluster's GCS "
                "listens on 6379 unless `ray start --port` said otherwise, Ray Client on 10001)")
    return f"it answers {head!r}..., not as a Ray cluster (gRPC)"


def resolve_auto() -> str:
    """The cluster ``--address auto`` would join, found as Ray finds it (``RAY_ADDRESS``, else the
    cluster file Ray's last ``ray start`` wrote, else a GCS process on this machine), without
    connecting; one line when there is none."""
    from ray._private.services import get_ray_address_from_environment

    try:
        return str(get_ray_address_from_environment("auto", None))
    except ConnectionError:
        raise bad("--address", "auto", RUNNING_CLUSTER, "no running Ray cluster found on this machine (no "
                  "RAY_ADDRESS, no cluster file of `ray start`, no GCS process)") from None


def check_listening(address: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """``HOST:PORT`` and ``ray://HOST:PORT``: a Ray cluster must answer there, else one line now
    instead of the minute ``ray.init`` spends retrying: something must accept a TCP connection
    and answer an HTTP/2 preface as a gRPC server does (Ray's GCS and Ray Client both are; with
    ``RAY_USE_TLS`` set only the connection is tried). ``auto`` is resolved first, as Ray would
    (a cluster file may name a cluster that is gone); ``local`` names no port to try."""
    if address == "auto":
        resolved = resolve_auto()
        why = _no_cluster_at(resolved, timeout)
        if why is not None:
            raise bad("--address", "auto", RUNNING_CLUSTER, f"it resolves to {resolved} (RAY_ADDRESS or Ray's "
                      f"cluster file), where {why}")
        return
    why = _no_cluster_at(address, timeout)
    if why is not None:
        raise bad("--address", address, RUNNING_CLUSTER, why)


def _no_cluster_at(address: str, timeout: float) -> str | None:
    """Why no Ray cluster answers at ``address`` (None: one does, or the form names no port)."""
    m = ADDRESS.match(address)
    if m is None:
        return None
    try:
        with socket.create_connection((m.group(2).strip("[]"), int(m.group(3))), timeout=timeout) as sock:
            tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
            return None if tls else _not_grpc(sock, timeout)
    except OSError as e:
        return f"nothing answers there within {timeout:g} s ({e.strerror or str(e) or type(e).__name__})"
