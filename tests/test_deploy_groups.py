"""The loopback deployment's process groups (simulations/deploy/groups.py), without Flower:
a party is stopped with every child it started, and a party that dies before it listens is
reported with its log. (The whole deployment: tests/test_deploy_loopback.py, slow.)"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from azsl_flower.tools.deploy import DeployError
from simulations.deploy.groups import spawn, stop_group, wait_port
from simulations.run.local_superlink import free_port

# A parent that starts a child ignoring SIGTERM (as a ClientApp process busy in C code
# may), prints the child's pid, and waits.
PARENT = (
    "import signal, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(1, flush=True); time.sleep(60)'], stdout=subprocess.PIPE)\n"
    "child.stdout.readline()\n"  # the child ignores SIGTERM from here on
    "print('child-pid', child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _child_pid(log: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := re.search(r"^child-pid (\d+)$", log.read_text(), re.MULTILINE):
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"the parent never reported its child:\n{log.read_text()}")


def test_stop_group_stops_a_child_that_ignores_sigterm(tmp_path):
    log = tmp_path / "party.log"
    proc = spawn([sys.executable, "-c", PARENT], log, dict(os.environ), tmp_path)
    child = _child_pid(log)
    try:
        assert _running(child)
        stop_group(proc, signal.SIGTERM, grace=10)
        assert proc.returncode is not None  # the leader is gone and reaped
        deadline = time.monotonic() + 5
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(child), "a child that outlived its parent was left running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()  # also when it is not a group leader (a broken spawn)
        proc.wait()
    assert log.read_text().startswith(f"\n$ {sys.executable} -c ")  # the command heads its log


def test_wait_port_names_the_log_of_a_party_that_exited(tmp_path):
    log = tmp_path / "superlink.log"
    proc = spawn([sys.executable, "-c", "raise SystemExit(3)"], log, dict(os.environ), tmp_path)
    with pytest.raises(DeployError, match=rf"process exited with 3; see {log}"):
        wait_port(free_port(), proc, timeout=20, log=log)
