"""Real processes for tests: a `rankbench run` driver in its own session, killed when a test is
ready and cleaned up so that nothing of it is left behind (Ray's helpers included), and method
plugins installed on disk the way pip installs them, for such processes to find."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def bench_run(args: list[str], cwd: Path, pythonpath: str = "") -> subprocess.Popen:
    """``python -m rankbench.bench run ARGS`` with a new local Ray (no RAY_ADDRESS), output captured."""
    env = dict(os.environ, PYTHONPATH=pythonpath)
    env.pop("RAY_ADDRESS", None)
    # its own session and process group: Ctrl-C goes to the group, and cleanup can find everything.
    # SIGINT back to its default, as for a command typed in a terminal: a test run started in
    # the background of a script inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt, so a Ctrl-C test would pass or fail by how pytest was launched
    return subprocess.Popen([sys.executable, "-m", "rankbench.bench", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def epochs_logged(log: Path) -> int:
    """Epoch lines a trial's log holds so far (0 before it exists)."""
    try:
        return log.read_text().count("[train] epoch ")
    except FileNotFoundError:
        return 0


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                zombie = (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                if os.getsid(int(d.name)) == sid and not zombie:   # a zombie is dead already
                    pids.append(int(d.name))
            except (OSError, IndexError):
                continue
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL, by pid, whatever the test's driver (session ``sid``) left running."""
    for _ in range(50):
        left = session_pids(sid)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not left:
            return
        time.sleep(0.1)


def kill_driver_when(p: subprocess.Popen, ready: Callable[[], bool], timeout: float) -> None:
    """SIGKILL the driver ``p`` as soon as ``ready()`` holds (polled every 50 ms for at most
    ``timeout`` seconds), as a lost head node would; fails if the driver ended first. Its
    session (Ray, trial workers) is killed in any case."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and p.poll() is None:
            if ready():
                break
            time.sleep(0.05)
        assert p.poll() is None, "the sweep ended before it could be killed mid-way:\n" + p.stdout.read()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
    finally:
        kill_session(p.pid)


def install(site: Path, package: str, source: str, entry_points: dict[str, str]) -> None:
    """Write the distribution ``package`` 0.1 into ``site`` the way pip installs a wheel."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[rankbench.methods]\n{lines}")
    (info / "RECORD").write_text("")
