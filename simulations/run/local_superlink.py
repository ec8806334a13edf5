"""Stop what `flwr run .` leaves behind: the managed local SuperLink and its children.

Flower starts a detached `flower-superlink` on the first `flwr run` and keeps it up after
the run. Tests and the quickstart stop the processes they started, found by the
FLWR_HOME in their environment, so a user's other Flower processes are never touched.

    python -m simulations.run.local_superlink stop [--flwr-home DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import time
from pathlib import Path


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _ancestors() -> set[int]:
    """This process and its parents (the shell that called us must survive)."""
    chain, pid = set(), os.getpid()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return chain


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (tests and the loopback deployment bind only there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_of(flwr_home: str) -> list[int]:
    """PIDs, not ours nor our parents', whose environment has FLWR_HOME=flwr_home."""
    home = str(Path(flwr_home).expanduser().resolve())
    skip = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in skip:
            env_home = _environ(int(entry.name)).get("FLWR_HOME")
            if env_home and str(Path(env_home).expanduser().resolve()) == home:
                found.append(int(entry.name))
    return found


def stop(flwr_home: str, grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns how many were signalled."""
    pids = processes_of(flwr_home)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        if not pids:
            break
    return len(processes_of(flwr_home))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("action", choices=["stop", "list"])
    ap.add_argument("--flwr-home", default=os.environ.get("FLWR_HOME", "~/.flwr"))
    args = ap.parse_args()
    if args.action == "list":
        print(" ".join(map(str, processes_of(args.flwr_home))))
        return
    left = stop(args.flwr_home)
    print("stopped local Flower processes" if not left else f"{left} process(es) would not stop")


if __name__ == "__main__":
    main()
