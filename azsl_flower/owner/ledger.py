"""One run's state at an owner, on the owner's disk, held by one message at a time.

A SuperNode runs every message in its own process with a *copy* of the node's Context
(last writer wins), and two messages of one run can be handled at once (a re-send after a
time-out while the first copy still runs, or a relay that delays a message). State kept in
the Context can therefore be forked: two replies from one counter, a budget counted twice.

So an owner keeps each run's state (its end of the encrypted session, what it answered)
in one JSON file under its cache dir and holds an exclusive lock (``fcntl.flock`` on a
lock file beside it) from opening a request until its answer is sealed: messages of one
run are handled one after another, each sees what the previous one wrote, and the file
is replaced atomically (temporary file, fsync, rename), so a crash never leaves half of
it. The file survives SuperNode restarts; it is mode 0600 in a 0700 folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from types import TracebackType
from typing import Any

from azsl_flower.owner.files import PrivateFileError, open_private, private_dir, write_private

__all__ = ["LedgerError", "RunLedger", "ledger_path", "read_ledger"]


class LedgerError(ValueError):
    """The run state file cannot be read; the message says how to start over."""


def ledger_path(folder: Path, run_id: int, who: str) -> Path:
    """``<folder>/run-<id>-<who>.json``; ``who`` is the owner key's fingerprint or node id."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", who):
        raise ValueError(f"owner identity {who!r} is not a plain name")
    return Path(folder) / f"run-{int(run_id)}-{who}.json"


class RunLedger:
    """``with RunLedger(folder, run_id, who) as ledger:`` exclusive access to one run's state.

    ``existed`` says whether the run had state before (an owner that has none for a run it
    is asked about mid-run lost it, or never took part). ``get``/``put`` read and write one
    section (``channel``, ``usage``); every ``put`` is on disk before it returns.
    """

    def __init__(self, folder: Path, run_id: int, who: str) -> None:
        self.path = ledger_path(folder, run_id, who)
        self.who = who  # whose state: the owner's key fingerprint or node id
        self._fd: int | None = None
        self.data: dict[str, Any] = {}
        self.existed = False

    def __enter__(self) -> RunLedger:
        private_dir(self.path.parent)  # 0700, ours, not a link (PrivateFileError says why)
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if not lock.is_symlink():
                raise
            raise PrivateFileError(
                f"run-state lock {lock} is a symbolic link; delete it (the owner locks only "
                "its own files)"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the message of this run being handled
            self.data, self.existed = self._read()
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _read(self) -> tuple[dict[str, Any], bool]:
        """The state as last written and whether there was any (never through a link)."""
        try:
            with open_private(self.path) as fh:
                data = json.loads(fh.read())
        except FileNotFoundError:
            return {}, False
        except PrivateFileError:
            raise
        except (OSError, ValueError) as exc:
            raise LedgerError(
                f"unreadable run state {self.path} ({exc}); delete it to start a new session "
                "(the service then drops and reports this owner for this run)"
            ) from None
        if not isinstance(data, dict):
            raise LedgerError(
                f"run state {self.path} is not a JSON object; delete it to start a new session"
            )
        return data, True

    def get(self, section: str) -> Any:
        return self.data.get(section)

    def put(self, section: str, value: Any) -> None:
        """Store ``section`` and write the whole state atomically (only under the lock)."""
        if self._fd is None:
            raise RuntimeError("RunLedger.put outside its with-block")
        self.data[section] = value
        blob = json.dumps(self.data).encode()
        write_private(self.path, lambda fh: fh.write(blob))
        self.existed = True


def read_ledger(folder: Path, run_id: int, who: str) -> dict[str, Any]:
    """A run's state as last written (no lock: for reports and tests)."""
    try:
        with open_private(ledger_path(folder, run_id, who)) as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return {}
