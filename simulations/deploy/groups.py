"""One process in its own session, and stopping it with all its children.

Flower's SuperLink and SuperNodes start children (ServerApp, ClientApp, SuperExec
processes); each is started here as the leader of a new session, so signalling its process
group stops them too. :class:`~simulations.deploy.processes.LocalDeployment` starts every
party this way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from azsl_flower.tools.deploy import DeployError
from simulations.deploy.layout import HOST


def spawn(argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start ``argv`` as a session leader, stdout and stderr appended to ``log`` after a
    ``$ argv`` line (so one log keeps every restart)."""
    with log.open("ab") as f:
        f.write(f"\n$ {' '.join(argv)}\n".encode())
        f.flush()
        # own session: stop_group() signals the process group, children included
        return subprocess.Popen(
            argv,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


def wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Until something listens on ``HOST:port``; a DeployError naming ``log`` if ``proc``
    exits first or nothing listens within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"process exited with {proc.returncode}; see {log}")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(0.5)
            s.connect((HOST, port))
            return
        time.sleep(0.2)
    raise DeployError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s; see {log}")


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """Send ``sig`` to ``proc``'s process group, then :func:`reap` it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    reap(proc, grace)


def reap(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Wait for the leader, then SIGKILL whatever is left of its process group."""
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group if its leader still runs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
