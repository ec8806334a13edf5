"""``azsl-flower owner serve``: an owner process that keeps torch and the teacher in memory.

Flower 1.42 starts a ClientApp process per message, which then pays torch's import and the
teacher's load each time. This worker, started beside the SuperNode by the owner (same
user), imports them once and answers every message the ClientApp forwards to it
(:mod:`azsl_flower.owner.forward`, node-config ``owner-worker``) by calling the SAME
handler the in-process path calls (:mod:`azsl_flower.owner.handlers`): the owner policy,
the run's lock on disk, the budget reserved before any work, the DP ledger and the sealed
refusals are the handlers', unchanged. What is cached in memory is what a long-lived
in-process owner caches too (``owner_state``, keyed by cache folder, data and every
teacher setting; channel keys keyed by path, file identity and run).

Its socket is the only way in: created 0600 in a folder that only this user may enter
(0700), so only the owner's own processes can ask it anything. Connections are read in
threads (a slow or silent one costs its thread ``read_timeout`` seconds, never the
others), but handled one at a time: the teacher, the state cache and the timing marks are
process state no handler was written to share, and torch already spreads one answer over
the cores. Messages of one run were one at a time anyway (the run's lock). A frame that
is not one (wrong magic, over the cap, truncated, undecodable) closes its connection and
is counted; the worker keeps serving.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import suppress
from logging import ERROR, INFO, WARNING
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.common.config import parse_config_args
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from azsl_flower.owner import handlers, timing
from azsl_flower.owner.files import PrivateFileError, private_dir
from azsl_flower.owner.forward import (
    KEY,
    MAX_FRAME,
    READ_TIMEOUT,
    FrameError,
    NoFrame,
    decode_request,
    encode_reply,
    listening,
    read_frame,
    write_frame,
)
from azsl_flower.wire import schema

__all__ = ["HANDLERS", "Worker", "WorkerError", "bind_socket", "main", "serve"]

Handler = Callable[[Message, Context], Message]
HANDLERS: dict[str, Handler] = {
    schema.SETUP.message_type: handlers.setup,
    schema.FEEDBACK.message_type: handlers.feedback,
    schema.VERIFY.message_type: handlers.verify,
    schema.DFZSL_PROBE.message_type: handlers.dfzsl_probe,
    schema.EVALUATE.message_type: handlers.evaluate,
}
MAX_CONNECTIONS = 64  # open at once; more are closed at once (and counted)


class WorkerError(ValueError):
    """The worker cannot serve at this socket path; the message names the path and the fix."""


def bind_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600, in a folder only this user may enter.

    The folder is created 0700 if missing; an existing one must be this user's, not a link,
    and closed to group and others (mode 0700 or stricter). An existing socket nobody
    listens on (a stopped worker's) is replaced; anything else at ``path`` is refused."""
    path = Path(path).expanduser().absolute()
    try:
        private_dir(path.parent)
    except PrivateFileError as exc:
        raise WorkerError(f"owner worker socket {path}: {exc}") from None
    mode = stat.S_IMODE(os.lstat(path.parent).st_mode)
    if mode & 0o077:
        raise WorkerError(
            f"owner worker socket {path}: its folder {path.parent} has mode {mode:04o}; only "
            f"the owner may enter it: chmod 700 {path.parent}"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise WorkerError(
                f"owner worker socket {path} exists and is not a socket; name a free path"
            )
        if listening(path):
            raise WorkerError(f"another owner worker already listens at {path}")
        path.unlink()  # a stopped worker's socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: never a moment when others may connect
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise WorkerError(f"owner worker socket {path}: cannot bind ({exc})") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(MAX_CONNECTIONS)
    return sock


def _policy_config(node_config: Mapping[str, object]) -> dict[str, object]:
    """A node config without the fast-path key (the worker's own copy need not name itself)."""
    return {k: v for k, v in node_config.items() if k != KEY}


class Worker:
    """One owner worker at ``path``: :meth:`serve_forever` until :meth:`shutdown`.

    ``node_config`` (optional): the owner's node config as the worker was started with;
    then a forwarded message whose node config differs (``owner-worker`` aside) is refused
    and counted, so a worker never answers under a policy its owner did not start it with.
    ``counts``: ``served``, and each kind of refused connection."""

    def __init__(
        self,
        path: Path,
        node_config: Mapping[str, object] | None = None,
        max_frame: int = MAX_FRAME,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        if max_frame < 1 or read_timeout <= 0:
            raise WorkerError(
                f"max_frame={max_frame} (>= 1 byte) and read_timeout={read_timeout} (> 0 s)"
            )
        self.path = Path(path).expanduser().absolute()
        self.node_config = None if node_config is None else _policy_config(node_config)
        self.max_frame, self.read_timeout = max_frame, read_timeout
        self.counts: Counter[str] = Counter()
        self._handling = threading.Lock()  # one message at a time (see the module's text)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        if self._sock is None:
            self._sock = bind_socket(self.path)

    def serve_forever(self) -> None:
        self.bind()
        assert self._sock is not None
        log(INFO, "owner worker: serving at %s (pid %s)", self.path, os.getpid())
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                if not self._slots.acquire(blocking=False):
                    self._refuse(conn, "busy", f"over {MAX_CONNECTIONS} connections at once")
                    continue
                threading.Thread(target=self._connection, args=(conn,), daemon=True).start()
        finally:
            self._close()

    def shutdown(self) -> None:
        self._stop.set()
        if self._sock is not None:
            with suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        with suppress(OSError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                self.path.unlink()

    def _refuse(self, conn: socket.socket, what: str, why: str) -> None:
        self.counts[what] += 1
        log(
            WARNING,
            "owner worker: refused a connection (%s #%d: %s); still serving",
            what,
            self.counts[what],
            why,
        )
        conn.close()

    def _connection(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.read_timeout)
            try:
                msg, context = decode_request(read_frame(conn, self.max_frame))
                handler = HANDLERS.get(msg.metadata.message_type)
                if handler is None:
                    raise FrameError(f"no handler for message type {msg.metadata.message_type!r}")
            except NoFrame:  # connected and closed: a readiness probe, not an attack
                self.counts["empty"] += 1
                return
            except (FrameError, OSError) as exc:  # OSError: timed out, reset
                self._refuse(conn, "bad_frames", f"{type(exc).__name__}: {exc}")
                return
            if self.node_config is not None and (
                _policy_config(context.node_config) != self.node_config
            ):
                self._refuse(
                    conn, "other_node_config", "the forwarded node config is not this worker's"
                )
                return
            conn.settimeout(None)  # the answer may take long (a set-up trains)
            reply, marks = self._handle(handler, msg, context)
            try:
                write_frame(conn, encode_reply(reply, marks))
            except OSError as exc:  # the ClientApp went away; the answer is in the run state
                log(WARNING, "owner worker: could not send a reply: %s", exc)
        finally:
            conn.close()
            self._slots.release()

    def _handle(
        self, handler: Handler, msg: Message, context: Context
    ) -> tuple[Message, list[tuple[str, float]]]:
        with self._handling:
            timing.take(0.0)  # marks of no message (none, normally)
            t0 = time.monotonic()
            try:
                reply = handler(msg, context)
            except Exception as exc:  # as Flower answers a ClientApp that raised
                log(ERROR, "owner worker: a %s message failed", msg.metadata.message_type,
                    exc_info=exc)  # fmt: skip
                reason = str(type(exc)) + ":<'" + str(exc) + "'>"
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
                )
            self.counts["served"] += 1
            return reply, timing.take(t0)


def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; the socket is removed on the way out."""
    config = None if args.node_config is None else parse_config_args([args.node_config])
    worker = Worker(Path(args.socket), config, args.max_frame_mb << 20, args.read_timeout)
    worker.bind()  # refuse a bad path before saying we serve

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with suppress(KeyboardInterrupt):
        worker.serve_forever()
    log(INFO, "owner worker: stopped (%s)", dict(worker.counts))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m azsl_flower.owner.worker ARGS`` = ``azsl-flower owner serve ARGS``."""
    from azsl_flower.tools.cli import main as cli

    return cli(["owner", "serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
