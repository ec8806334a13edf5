"""The ClientApp's fast path: forward a message to the owner's worker over a Unix socket.

Flower 1.42 starts a ClientApp process per message, and every message kind needs torch
(2.8 s of a 4.7 s owner share, measured on loopback). With ``owner-worker=<socket path>``
in the node config, the ClientApp imports none of it: it sends the message and the Context
parts the handlers read to ``azsl-flower owner serve`` (:mod:`azsl_flower.owner.worker`),
which keeps the teacher in memory and calls the same handler, and wraps the reply it gets
back. Every guarantee stays where it was: the worker runs the handlers, which lock the run's
state on disk, reserve the budget and seal.

Standard library, flwr and this module only (no torch, no numpy of ours): a test checks the
fast path's imports. The frame format is shared with the worker:

``MAGIC`` (4 bytes), body length (8 bytes, big-endian, at most the reader's cap), then the
body: sections, each an 8-byte length and its bytes. A request's sections: the Message as
Flower serialises it (``flwr.common.serde.message_to_proto``), then the Context's
(``context_to_proto``, its ``state`` left empty: the handlers keep nothing there). A reply's:
the reply Message, then a JSON object (``marks``: the worker's timing marks, seconds after
it read the request; empty while timings are off).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from logging import ERROR
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.common import serde
from flwr.common.logger import log
from flwr.proto.message_pb2 import Context as ProtoContext  # type: ignore[attr-defined]
from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined]

from azsl_flower.owner import timing

__all__ = [
    "KEY",
    "MAGIC",
    "MAX_FRAME",
    "READ_TIMEOUT",
    "UNAVAILABLE_CODE",
    "FrameError",
    "NoFrame",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "forward",
    "listening",
    "read_frame",
    "worker_socket",
    "write_frame",
]

KEY = "owner-worker"  # the node-config key (owner/policy_keys.py) naming the worker's socket
MAGIC = b"AZW1"
MAX_FRAME = 1 << 30  # bytes of one frame's body by default (a weights set-up is ~MBs)
MAX_SECTIONS = 4
READ_TIMEOUT = 30.0  # seconds the worker gives a connection to send its request
UNAVAILABLE_CODE = 4102  # Flower Error code: this owner's worker could not answer
CONNECT_TIMEOUT = 10.0  # seconds to reach the worker (it is local: it is there, or it is not)
REPLY_TIMEOUT = 12 * 3600.0  # a set-up may train for long; never longer than Flower's TTL
_HEAD = 12  # magic + body length


class FrameError(ValueError):
    """A frame that is not one of ours: wrong magic, over the cap, truncated, undecodable."""


class NoFrame(FrameError):  # noqa: N818 - reads as "raise NoFrame(...)"
    """The peer closed before sending a byte (a readiness probe, or a ClientApp gone)."""


def worker_socket(node_config: object) -> str:
    """The worker's socket path from the node config, or '' for the in-process path."""
    raw = getattr(node_config, "get", lambda *_: "")(KEY, "")
    return str(raw).strip() if isinstance(raw, str) else ""


# framing --------------------------------------------------------------------------------------


def write_frame(sock: socket.socket, sections: Sequence[bytes]) -> None:
    body = b"".join(len(s).to_bytes(8, "big") + s for s in sections)
    sock.sendall(MAGIC + len(body).to_bytes(8, "big") + body)


def _read_exactly(sock: socket.socket, n: int, first: bool = False) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            if not buf and first:
                raise NoFrame("closed before sending anything")
            raise FrameError(f"truncated frame: {len(buf)} of {n} bytes, then the peer closed")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, limit: int = MAX_FRAME) -> list[bytes]:
    """One frame's sections; FrameError for anything that is not a frame within ``limit``."""
    head = _read_exactly(sock, _HEAD, first=True)
    if head[:4] != MAGIC:
        raise FrameError(f"not a worker frame (starts with {head[:4]!r}, expected {MAGIC!r})")
    size = int.from_bytes(head[4:], "big")
    if size > limit:
        raise FrameError(f"frame of {size} bytes is over the cap of {limit} bytes")
    body, sections, at = _read_exactly(sock, size), [], 0
    while at < size:
        if len(sections) == MAX_SECTIONS or at + 8 > size:
            raise FrameError("frame sections do not add up to its length")
        n = int.from_bytes(body[at : at + 8], "big")
        if at + 8 + n > size:
            raise FrameError(f"a section of {n} bytes runs past the frame's end")
        sections.append(body[at + 8 : at + 8 + n])
        at += 8 + n
    return sections


# what a frame holds ---------------------------------------------------------------------------


def encode_request(msg: Message, context: Context) -> list[bytes]:
    bare = Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=dict(context.node_config),
        state=RecordDict(),
        run_config=dict(context.run_config),
    )
    return [
        serde.message_to_proto(msg).SerializeToString(),
        serde.context_to_proto(bare).SerializeToString(),
    ]


def decode_request(sections: list[bytes]) -> tuple[Message, Context]:
    """FrameError unless the sections are a Message and a Context."""
    if len(sections) != 2:
        raise FrameError(f"a request has 2 sections (message, context), got {len(sections)}")
    try:
        msg = serde.message_from_proto(ProtoMessage.FromString(sections[0]))
        ctx = serde.context_from_proto(ProtoContext.FromString(sections[1]))
    except Exception as exc:  # a hostile or broken peer: nothing but FrameError leaves
        raise FrameError(f"undecodable request: {type(exc).__name__}: {exc}"[:300]) from None
    if not msg.has_content():
        raise FrameError("a request carries content, not an error")
    return msg, ctx


def encode_reply(reply: Message, marks: list[tuple[str, float]]) -> list[bytes]:
    return [
        serde.message_to_proto(reply).SerializeToString(),
        json.dumps({"marks": marks}).encode(),
    ]


def decode_reply(sections: list[bytes]) -> tuple[Message, list[tuple[str, float]]]:
    if len(sections) != 2:
        raise FrameError(f"a reply has 2 sections (message, marks), got {len(sections)}")
    try:
        reply = serde.message_from_proto(ProtoMessage.FromString(sections[0]))
        marks = [(str(n), float(t)) for n, t in json.loads(sections[1])["marks"]]
    except Exception as exc:
        raise FrameError(f"undecodable reply: {type(exc).__name__}: {exc}"[:300]) from None
    return reply, marks


# the ClientApp's end --------------------------------------------------------------------------


def forward(path: str, msg: Message, context: Context) -> Message:
    """``msg`` answered by the worker at ``path``, as a reply to ``msg``.

    If the worker cannot be reached or its answer is not a frame, the reply is a Flower
    Error (code :data:`UNAVAILABLE_CODE`) naming the exception's class only (the path and
    the details go to the owner's log): the service's transport counts it as this owner's
    failure (re-sent, then dropped), as it does any error reply. Nothing was opened, so
    nothing can be sealed; nothing is lost, since the worker reserves and writes under the
    run's lock only when it answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(str(Path(path).expanduser()))
            sock.settimeout(REPLY_TIMEOUT)
            sent = time.monotonic()
            write_frame(sock, encode_request(msg, context))
            reply, marks = decode_reply(read_frame(sock))
        timing.extend([(name, sent + t) for name, t in marks])
        timing.mark("forward")
    except Exception as exc:  # unreachable, gone mid-answer, or not speaking frames
        log(
            ERROR,
            "owner %s: the owner worker at %s did not answer a %s message: %s: %s",
            context.node_id,
            path,
            msg.metadata.message_type,
            type(exc).__name__,
            exc,
        )
        reason = f"azsl-owner-worker: unavailable ({type(exc).__name__}); the owner's log says why"
        return Message(Error(code=UNAVAILABLE_CODE, reason=reason), reply_to=msg)
    if reply.has_error():
        return Message(reply.error, reply_to=msg)
    return Message(reply.content, reply_to=msg)


def listening(path: str | Path, timeout: float = 1.0) -> bool:
    """Whether a worker accepts connections at ``path`` (a stale socket file does not):
    the worker's bind refuses to replace a live one, and launchers wait for it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
