"""A deployed owner and the parties that may attack it, for the attack tests.

:class:`Owner` is one data owner as deployed: its own keys and node config (no
``partition-id``), served by the real ClientApp. Its ``service`` end holds the service's
keys, so tests can play an honest service, a hostile one (any settings, any request) or
a relay (replays, copies, reordering) with the project's own sealing code.
"""

from __future__ import annotations

import copy
import threading
import traceback
from pathlib import Path

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import parse_run_config, resolve_cache_dir
from azsl_flower.common.models import classifier, state_to_numpy
from azsl_flower.wire import codec, errors, schema
from azsl_flower.wire.channels import SERVICE, ServiceSecurity
from azsl_flower.wire.crypto import Channel, write_keypair

__all__ = ["Owner", "Reply", "deliver_at_once", "evaluate_payload", "query_payload"]

FAST_TEACHER = 1  # epochs: these tests need a teacher, not a good one


class Reply:
    """What came back: ``answers`` (decoded), a sealed ``refusal``, or an ``error`` reply."""

    def __init__(
        self,
        message: Message,
        answers: list[schema.Payload] | None = None,
        refusal: errors.Refused | None = None,
    ) -> None:
        self.message, self.answers, self.refusal = message, answers, refusal
        self.error = message.error.reason if message.has_error() else None

    @property
    def rejection(self) -> str | None:
        if not self.message.has_error():
            return None
        return errors.parse_rejection(int(self.message.error.code), self.error or "")


class Owner:
    """One deployed data owner (node ``node_id`` of run ``run_id``) and its service."""

    def __init__(
        self,
        tmp_path: Path,
        node_id: int = 11,
        run_id: int = 3,
        run_config: dict | None = None,
        suite: str = "aes-256-gcm",
        **node_config: object,
    ) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
        keys = tmp_path / "keys"
        if not (keys / "service.key").exists():
            write_keypair(keys, "service")
        name = f"owner-{node_id}"
        write_keypair(keys / "owners", name)
        config: dict[str, object] = {
            "owner-key": str(keys / "owners" / f"{name}.key"),
            "service-pub": str(keys / "service.pub"),
            "device": "cpu",
            "teacher-epochs": FAST_TEACHER,
            # one teacher for every test owner (the tests' private $AZSL_CACHE_DIR holds it);
            # run state is per key, so owners never share it
            "seed": 0,
        }
        config.update({k.replace("_", "-"): v for k, v in node_config.items()})
        config = {k: v for k, v in config.items() if v is not None}
        self.run_config = dict(run_config or {})
        self.ctx = Context(
            run_id=run_id,
            node_id=node_id,
            node_config=config,
            state=RecordDict(),
            run_config=self.run_config,
        )
        self.node, self.run_id = node_id, run_id
        self.service = ServiceSecurity.from_files(
            suite, run_id, str(keys / "service.key"), str(keys / "owners" / f"{name}.pub")
        )
        self.cache = resolve_cache_dir(config.get("cache-dir", ""))

    def settings(self, **overrides: object) -> dict[str, object]:
        """The run settings a service sends with every request (it may send anything)."""
        settings = parse_run_config(self.run_config).owner_settings()
        settings.update({k.replace("_", "-"): v for k, v in overrides.items()})
        return settings

    def request(
        self, kind: schema.Kind, payloads: list[dict] | None = None, phase: str = "p", **settings
    ) -> Message:
        """A request sealed by the service (``settings``: what it claims about the run)."""
        parts = [
            schema.encode(kind, "request", settings=self.settings(**settings), **p)
            for p in (payloads if payloads is not None else [{}])
        ]
        return Message(
            content=self.service.seal(self.node, kind.message_type, phase, parts),
            dst_node_id=self.node,
            message_type=kind.message_type,
        )

    def deliver(self, msg: Message, ctx: Context | None = None) -> Message:
        """Run the ClientApp on ``msg`` as a SuperNode does: in a task with its own copy of
        the node's Context; an exception becomes an error reply."""
        ctx = copy.deepcopy(self.ctx) if ctx is None else ctx
        try:
            return client_app(msg, ctx)
        except Exception as exc:
            return Message(Error(code=2, reason=f"{exc!r}\n{traceback.format_exc()}"), reply_to=msg)

    def open(self, kind: schema.Kind, reply: Message) -> Reply:
        """What the service makes of a reply (raises RejectedError as the transport would)."""
        if reply.has_error():
            return Reply(reply)
        parts = self.service.open(self.node, kind.message_type, reply.content)
        refusal = errors.read_refusal(parts)
        if refusal is not None:
            return Reply(reply, refusal=refusal)
        return Reply(reply, answers=[schema.decode(kind, "reply", p) for p in parts])

    def peek(self, kind: schema.Kind, reply: Message) -> Reply:
        """Open a reply with the service's key but without its freshness bookkeeping (which
        keeps only the latest request per node): what did the owner send to this request?"""
        if reply.has_error():
            return Reply(reply)
        [(header, body)] = codec.open_envelope(reply.content)
        [ch] = self.service.channels.values()
        fresh = Channel(ch.me, ch.peer, self.run_id, ch.suite)
        _, plaintext = fresh.open(header, body, kind.message_type, str(self.node), SERVICE)
        parts = codec.unbundle(codec.from_bytes(plaintext))
        refusal = errors.read_refusal(parts)
        if refusal is not None:
            return Reply(reply, refusal=refusal)
        return Reply(reply, answers=[schema.decode(kind, "reply", p) for p in parts])

    def ask(self, kind: schema.Kind, payloads: list[dict] | None = None, **settings) -> Reply:
        return self.open(kind, self.deliver(self.request(kind, payloads, **settings)))


def query_payload(kind: schema.Kind, n: int, dim: int = 64, seed: int = 0) -> dict:
    """``n`` generated digits-sized features to ask feedback or verification about."""
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.random((n, dim), dtype=np.float32), "y": np.arange(n, dtype=np.int64) % 10}
    scalars = {"batch_size": min(n, 256), "lse_grad": False} if kind is schema.FEEDBACK else {}
    return {"arrays": arrays, "scalars": scalars}


def evaluate_payload(
    calibration: np.ndarray | None = None,
    unseen: tuple[int, ...] = (2, 5, 9),
    weights: dict[str, np.ndarray] | None = None,
) -> dict:
    """One model to score (a random digits classifier unless ``weights``)."""
    arrays = {"unseen": np.asarray(unseen, dtype=np.int64)}
    if calibration is not None:
        arrays["calibration"] = np.asarray(calibration, dtype=np.float32)
    return {"arrays": arrays, "weights": weights or state_to_numpy(classifier(64, 10))}


def envelope_of(msg: Message) -> list[tuple[bytes, bytes]]:
    return codec.open_envelope(msg.content)


def deliver_at_once(owners: list[Owner], messages: list[Message]) -> list[Message]:
    """Deliver ``messages[i]`` to ``owners[i]`` all at once, each to its own copy of that
    owner's Context, as a SuperNode runs concurrent tasks (the same owner may repeat)."""
    copies = [copy.deepcopy(o.ctx) for o in owners]
    start = threading.Barrier(len(messages))
    replies: list[Message | None] = [None] * len(messages)

    def task(i: int) -> None:
        start.wait()
        replies[i] = owners[i].deliver(messages[i], copies[i])

    threads = [threading.Thread(target=task, args=(i,)) for i in range(len(messages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert all(r is not None for r in replies), "a task did not finish"
    return replies  # type: ignore[return-value]
