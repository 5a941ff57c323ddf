"""The processes a sweep's local Ray starts end with the sweep, however the sweep ends.

When the driver is killed outright (SIGKILL, or its parent's death, which the supervising
``rankbench run`` passes on), no code of it runs: Ray's GCS and raylet go, but the raylet's
dashboard and runtime-env agents stay for minutes, retrying to flush their logs to the GCS that
is gone. A small watchdog, started in a session of its own right after ``ray.init`` started the
local Ray, looks at the driver's descendants every second (each with its start time, so a reused
pid is never touched) while the driver lives, and once it is gone kills what is left of the last
look.

``python -m rankbench.bench.running.reaper DRIVER_PID`` is the watchdog; :func:`start_reaper`
starts it. Linux only (it reads ``/proc``); elsewhere it does nothing.

May import: nothing of the project.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0


def start_reaper(driver_pid: int | None = None) -> subprocess.Popen | None:
    """Start the watchdog of ``driver_pid`` (default: this process); None where there is no /proc."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "rankbench.bench.running.reaper", str(driver_pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # after the command name, which may hold spaces
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every process below ``root`` now: pid -> start time."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry.name))
                started[int(entry.name)] = st[1]
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in started and pid not in out:
            out[pid] = started[pid]
            todo.extend(children.get(pid, []))
    return out


def reap(driver_pid: int) -> int:
    """Watch ``driver_pid``; when it is gone, SIGKILL the descendants it had. Returns how many."""
    born = _stat(driver_pid)
    seen: dict[int, int] = {}
    while born is not None and _stat(driver_pid) == born:
        seen = descendants(driver_pid)          # the last look while the driver lived is what is killed
        seen.pop(os.getpid(), None)
        time.sleep(POLL_S)
    killed = 0
    for pid, start in seen.items():
        st = _stat(pid)
        if st is not None and st[1] == start:       # the same process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


if __name__ == "__main__":
    reap(int(sys.argv[1]))
