"""Sealing and opening AZSL messages at each end point (service and owner).

:mod:`azsl_flower.wire.crypto` has the primitives and one :class:`~azsl_flower.crypto.Channel`
per pair of keys; this module decides which key a message is for, keeps the owners'
channel state in Flower's node ``Context``, and provisions per-run keys in simulation.

Key provisioning:

- deployed: the service's run config names ``service-key`` (its private key) and
  ``owner-keys`` (the allow-list: a folder of owners' ``*.pub`` or a comma list); each
  owner's node config names ``owner-key`` and ``service-pub`` (the pinned service key);
- simulation (``service-key`` empty): the service generates a key for itself and for each
  partition in ``<cache-dir>/keys/run-<run id>/`` (mode 0700) and deletes it at the end;
  each simulated owner loads ``owner-<partition-id>.key`` from there. Every message is
  still sealed exactly as in a deployment.

The service does not know which node holds which key until the node answers once, so the
set-up request is sealed once for every allow-listed key not yet bound to a node; the
owner opens the part addressed to its key, and its authenticated answer binds node to key
for the rest of the run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from flwr.app import Message, RecordDict

from azsl_flower.common.config import resolve_cache_dir
from azsl_flower.wire import codec, schema
from azsl_flower.wire.crypto import (
    Channel,
    Header,
    KeyFileError,
    RejectedError,
    fingerprint,
    load_private_key,
    load_public_key,
    load_public_keys,
    write_keypair,
)

__all__ = [
    "SERVICE",
    "CryptoStats",
    "ServiceSecurity",
    "OwnerSecurity",
    "StateStore",
    "owner_keys",
    "simulation_key_dir",
    "provision_simulation_keys",
]

SERVICE = "service"  # the service's name in headers; owners are named by their node id
_STATE_KEY = "channel"  # section of the owner's run state


def simulation_key_dir(cache_dir: object, run_id: int) -> Path:
    return resolve_cache_dir(cache_dir) / "keys" / f"run-{run_id}"


def provision_simulation_keys(cache_dir: object, run_id: int, num_owners: int) -> Path:
    """Fresh per-run keys for a simulation: service + owner-0..N-1 (the last run's are stale)."""
    folder = simulation_key_dir(cache_dir, run_id)
    if folder.exists():
        shutil.rmtree(folder)  # per-run keys of a run with this id that did not clean up
    folder.mkdir(parents=True, mode=0o700)
    write_keypair(folder, "service")
    for i in range(num_owners):
        write_keypair(folder, f"owner-{i}")
    return folder


@dataclass
class CryptoStats:
    plaintext_bytes: int = 0
    ciphertext_bytes: int = 0
    seconds: float = 0.0


class ServiceSecurity:
    """The service's end: one channel per allow-listed owner key, bound to nodes on first use."""

    def __init__(
        self,
        suite: str,
        run_id: int,
        me: X25519PrivateKey | None = None,
        owners: dict[str, X25519PublicKey] | None = None,
    ) -> None:
        self.suite, self.run_id = suite, run_id
        self.stats = CryptoStats()
        self.channels: dict[str, Channel] = {}
        if suite != "none":
            if me is None or not owners:
                raise KeyFileError(
                    "encryption needs the service's private key and the owners' keys"
                )
            self.channels = {fp: Channel(me, pub, run_id, suite) for fp, pub in owners.items()}
        self.bound: dict[int, str] = {}  # node id -> owner key fingerprint
        self._expected: dict[int, dict[str, int]] = {}  # node -> {key: seq it must answer}

    @classmethod
    def from_files(
        cls, suite: str, run_id: int, service_key: str, owner_keys: str
    ) -> ServiceSecurity:
        if suite == "none":
            return cls(suite, run_id)
        return cls(suite, run_id, load_private_key(service_key), load_public_keys(owner_keys))

    def seal(self, node: int, kind: str, phase: str, parts: list[RecordDict]) -> RecordDict:
        content = codec.bundle(parts)
        if self.suite == "none":
            return content
        t = time.perf_counter()
        plaintext = codec.to_bytes(content)
        keys = [self.bound[node]] if node in self.bound else self._unbound()
        if not keys:
            raise KeyFileError(f"every allow-listed owner key is bound; node {node} has none left")
        sealed = []
        self._expected[node] = {}
        for fp in keys:
            header, body = self.channels[fp].seal(kind, phase, SERVICE, str(node), plaintext)
            self._expected[node][fp] = self.channels[fp].send_seq
            sealed.append((header, body))
        self.stats.plaintext_bytes += len(plaintext)
        self.stats.ciphertext_bytes += sum(len(h) + len(b) for h, b in sealed)
        self.stats.seconds += time.perf_counter() - t
        return codec.envelope(sealed)

    def addressable(self, node: int) -> bool:
        """False once every allow-listed key belongs to another node: it cannot be an owner."""
        return self.suite == "none" or node in self.bound or bool(self._unbound())

    def _unbound(self) -> list[str]:
        taken = set(self.bound.values())
        return [fp for fp in self.channels if fp not in taken]

    def open(self, node: int, kind: str, content: RecordDict) -> list[RecordDict]:
        """Authenticate and decrypt a reply from ``node``; raises RejectedError."""
        if self.suite == "none":
            return _unbundle(content)
        t = time.perf_counter()
        parts = _envelope_parts(content)
        if len(parts) != 1:
            raise RejectedError("malformed", f"a reply holds {len(parts)} sealed parts, not 1")
        header, body = parts[0]
        sender_key = Header.from_bytes(header).sender_key
        expected = self._expected.get(node, {})
        bound = self.bound.get(node)
        if sender_key not in self.channels or (bound and sender_key != bound):
            raise RejectedError("unknown-sender", f"node {node} answered with key {sender_key}")
        if not bound and sender_key in self.bound.values():
            raise RejectedError(
                "unknown-sender", f"key {sender_key} already belongs to another node"
            )
        if sender_key not in expected:
            raise RejectedError("misrouted", f"no request to node {node} under key {sender_key}")
        h, plaintext = self.channels[sender_key].open(header, body, kind, str(node), SERVICE)
        if h.reply_to != expected[sender_key]:
            raise RejectedError(
                "out-of-order", f"answers request {h.reply_to}, expected {expected[sender_key]}"
            )
        self.bound[node] = sender_key
        self._expected.pop(node, None)
        self.stats.plaintext_bytes += len(plaintext)
        self.stats.ciphertext_bytes += len(header) + len(body)
        out = _unbundle(_from_bytes(plaintext))
        self.stats.seconds += time.perf_counter() - t
        return out


class StateStore(Protocol):
    """Where an owner keeps its end of the session between messages (its run ledger)."""

    def get(self, section: str) -> Any: ...

    def put(self, section: str, value: Any) -> None: ...


class OwnerSecurity:
    """An owner's end: its key, the pinned service key, and its channel state in ``store``.

    ``store`` is the owner's run state on its own disk, held exclusively while one message
    is handled (:class:`azsl_flower.owner.ledger.RunLedger`); nothing lives in Flower's
    Context, whose copies a SuperNode hands to concurrent tasks.
    """

    def __init__(
        self,
        node: str,
        run_id: int,
        suite: str,
        keys: tuple[X25519PrivateKey, X25519PublicKey] | None,
        store: StateStore,
    ) -> None:
        self.name, self.suite, self.store = node, suite, store
        self.channel: Channel | None = None
        if suite == "none":
            return
        if keys is None:
            raise KeyFileError("encryption needs this owner's key and the pinned service key")
        me, service = keys
        saved = store.get(_STATE_KEY)
        state = _load_state(saved) if saved is not None else None
        if state is not None and state["peer"] != fingerprint(service):
            state = None  # a new service key: a new session
        self.fresh = state is None
        self.channel = (
            Channel.from_state(me, service, run_id, suite, state["channel"])
            if state is not None
            else Channel(me, service, run_id, suite)
        )

    def open(self, msg: Message, kind: str) -> tuple[Header | None, list[RecordDict]]:
        """(header to answer, payload parts) of a request; raises RejectedError."""
        if self.channel is None:
            return None, _unbundle(msg.content)
        parts = _envelope_parts(msg.content)
        mine = [(h, b) for h, b in parts if _recipient_key(h) in (self.channel.my_key, None)]
        if not mine:
            raise RejectedError(
                "wrong-key", f"no part of this message is sealed for key {self.channel.my_key}"
            )
        header, body = mine[0]
        h, plaintext = self.channel.open(header, body, kind, SERVICE, self.name)
        if self.fresh and kind != schema.SETUP.message_type:
            # No state for this run: lost (cache deleted) or never had any. Only a set-up
            # starts a session, so a relay cannot replay older requests of this run to it.
            raise RejectedError(
                "no-session",
                "this owner has no state for this run; only a set-up request starts one",
            )
        self._save()
        return h, _unbundle(_from_bytes(plaintext))

    def seal(self, kind: str, request: Header | None, parts: list[RecordDict]) -> RecordDict:
        """Seal the answer to ``request`` (bound to its phase and seq)."""
        content = codec.bundle(parts)
        if self.channel is None or request is None:
            return content
        header, body = self.channel.seal(
            kind, request.phase, self.name, SERVICE, codec.to_bytes(content), request.seq
        )
        self._save()
        return codec.envelope([(header, body)])

    def _save(self) -> None:
        assert self.channel is not None
        st = self.channel.state()
        self.store.put(_STATE_KEY, {"peer": self.channel.peer_key, "channel": st})
        self.fresh = False


_KEYS: dict[tuple[str, ...], tuple[X25519PrivateKey, X25519PublicKey]] = {}


def owner_keys(
    node: Mapping[str, object], run: Mapping[str, object], run_id: int
) -> tuple[X25519PrivateKey, X25519PublicKey]:
    """The owner's private key and the pinned service key, read from disk once per process
    and run (a SuperNode serving many messages in one process does not re-read them).

    Deployed: ``owner-key`` and ``service-pub`` from the node config. Simulated (a
    ``partition-id`` and no keys of its own): this run's per-run keys."""
    if "owner-key" in node or "service-pub" in node:
        if not ("owner-key" in node and "service-pub" in node):
            raise KeyFileError("set both owner-key and service-pub in this SuperNode's node config")
        paths = (str(node["owner-key"]), str(node["service-pub"]))
    elif "partition-id" in node:
        folder = simulation_key_dir(run.get("cache-dir", ""), run_id)
        paths = (
            str(folder / f"owner-{int(node['partition-id'])}.key"),  # type: ignore[call-overload]
            str(folder / "service.pub"),
        )
    else:
        raise KeyFileError(
            "this owner has no key: set owner-key and service-pub in its node config"
        )
    cache_key = (*paths, str(run_id), *(_stamp(p) for p in paths))
    if cache_key not in _KEYS:
        try:
            keys = load_private_key(paths[0]), load_public_key(paths[1])
        except KeyFileError as exc:
            if "owner-key" in node:
                raise
            raise KeyFileError(
                f"no per-run simulation key ({exc}); a deployed owner sets owner-key and "
                "service-pub in its node config"
            ) from None
        while len(_KEYS) >= 16:  # a simulation process serves a few owners per run
            _KEYS.pop(next(iter(_KEYS)))
        _KEYS[cache_key] = keys
    return _KEYS[cache_key]


def _stamp(path: str) -> str:
    """A file's identity and change time: a key file replaced in place is read again."""
    try:
        st = Path(path).expanduser().stat()
    except OSError:
        return "missing"
    return f"{st.st_ino}:{st.st_mtime_ns}"


def _load_state(rec: object) -> dict[str, Any]:
    """A saved channel state, checked field by field (a damaged file is refused clearly)."""
    try:
        assert isinstance(rec, dict)
        ch = rec["channel"]
        state = {
            "send_seq": int(ch["send_seq"]),
            "recv_last": int(ch["recv_last"]),
            "recv_seen": [int(s) for s in ch["recv_seen"]],
        }
        return {"peer": str(rec["peer"]), "channel": state}
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise KeyFileError(
            f"unreadable channel state ({exc!r}); delete this run's state file in the owner's "
            "cache-dir (runs/) to start a new session (the service then drops and reports "
            "this owner for this run)"
        ) from None


def _recipient_key(header: bytes) -> str | None:
    try:
        return Header.from_bytes(header).recipient_key
    except RejectedError:
        return None  # let Channel.open name the problem


def _envelope_parts(content: RecordDict) -> list[tuple[bytes, bytes]]:
    try:
        return codec.open_envelope(content)
    except schema.ProtocolError as exc:
        raise RejectedError("malformed", str(exc)) from None


def _from_bytes(plaintext: bytes) -> RecordDict:
    try:
        return codec.from_bytes(plaintext)
    except schema.ProtocolError as exc:
        raise RejectedError("malformed", str(exc)) from None


def _unbundle(content: RecordDict) -> list[RecordDict]:
    try:
        return codec.unbundle(content)
    except schema.ProtocolError as exc:
        raise RejectedError("malformed", str(exc)) from None
