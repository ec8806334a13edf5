"""End-to-end authenticated encryption between the AI service and each data owner.

Flower's TLS protects each hop, but the SuperLink relays and stores message content in
the clear. Here every AZSL payload is sealed with an AEAD before it enters a Flower
message, so only the two end points can read or alter it. Nothing is hand-rolled: the
``cryptography`` package provides X25519, HKDF-SHA256, AES-256-GCM and ChaCha20-Poly1305.

Keys. Every node has a long-term X25519 key pair in PEM files (``azsl-flower keys
generate``). The static-static shared secret authenticates both ends implicitly: only the
holders of the two private keys can derive it.

One key per sender session. The sender draws a 16-byte random ``salt`` when its session
starts; the AEAD key is HKDF-SHA256(shared secret, salt, info = protocol version, suite,
run id, sender key → recipient key). Keys therefore differ per run, per direction and per
sender session, and within one key the 96-bit nonce is the sender's message counter
(``seq``), which only ever increases: a nonce never repeats under one key. A sender that
lost its state starts a new session (new salt, new key) instead of reusing counters.

Associated data is the whole clear-text header: suite, run id, message kind, phase,
sender and receiver node, both key fingerprints, salt, ``seq`` and the ``seq`` it answers.
A receiver checks the header against what it expects, rejects any ``seq`` not above the
last one it accepted from that session (replay, reordering), and commits its state only
after the tag verified. A rejected message raises :class:`RejectedError` with a reason; it is
never decrypted to anything usable.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "SUITES",
    "REASONS",
    "RejectedError",
    "KeyFileError",
    "Header",
    "Channel",
    "fingerprint",
    "generate_keypair",
    "write_keypair",
    "load_private_key",
    "load_public_key",
    "load_public_keys",
]

VERSION = "azsl-flower/1"
_AEADS = {"aes-256-gcm": AESGCM, "chacha20-poly1305": ChaCha20Poly1305}
SUITES = (*_AEADS, "none")
REASONS = (
    "malformed",  # the envelope or header cannot be parsed
    "wrong-suite",  # sealed with another cipher suite than this run uses
    "wrong-run",  # bound to another run id
    "wrong-key",  # not addressed to this end point's key
    "unknown-sender",  # sender key not on the allow-list (or not the one bound to this node)
    "misrouted",  # kind, sender or receiver node differ from what the transport says
    "session-changed",  # the sender's session salt changed within a run
    "replay",  # this seq was already accepted
    "out-of-order",  # seq below the last accepted one
    "authentication-failed",  # AEAD tag mismatch: tampered, or sealed under another key
)


class RejectedError(Exception):
    """A message failed a check; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class KeyFileError(ValueError):
    """A key file is missing, unreadable or of the wrong type."""


# -- key files ------------------------------------------------------------------------------


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: X25519PublicKey) -> str:
    """First 16 bytes of SHA-256 over the raw public key, hex: what operators compare."""
    return hashlib.sha256(_raw(public)).hexdigest()[:32]


def generate_keypair() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (no window where a key is world-readable);
    fails if it exists, so nothing is ever overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # umask may have narrowed it; private keys must be exactly 0600


def write_keypair(out_dir: str | Path, name: str, key: X25519PrivateKey | None = None) -> Path:
    """Write ``NAME.key`` (private, mode 0600) and ``NAME.pub``; never overwrite a key."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name such as 'owner-1'")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(
                f"{p} already exists; choose another --name or --out (keys are never overwritten)"
            )
    key = key or generate_keypair()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_file(priv_path, pem, 0o600)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_path


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise KeyFileError(f"{what} {p} does not exist; create it with `azsl-flower keys generate`")
    return p.read_bytes()


def load_private_key(path: str | Path) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}; AZSL needs an X25519 key")
    return key


def load_public_key(path: str | Path) -> X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path, "public key"))
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}; AZSL needs an X25519 key")
    return key


def load_public_keys(spec: str) -> dict[str, X25519PublicKey]:
    """An allow-list: a folder of ``*.pub`` files or a comma-separated list of files."""
    paths: list[Path] = []
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        p = Path(part).expanduser()
        if p.is_dir():
            paths += sorted(p.glob("*.pub"))
        else:
            paths.append(p)
    if not paths:
        raise KeyFileError(f"owner-keys={spec!r} names no *.pub file; list the owners' public keys")
    keys = {}
    for p in paths:
        k = load_public_key(p)
        keys[fingerprint(k)] = k
    return keys


# -- sealed messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """Clear-text header; all of it is the AEAD's associated data."""

    suite: str
    run: int
    kind: str
    phase: str
    sender: str
    recipient: str
    sender_key: str
    recipient_key: str
    salt: str
    seq: int
    reply_to: int = -1

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Header:
        try:
            d = json.loads(raw.decode())
            h = cls(**d)
            ok = isinstance(h.seq, int) and isinstance(h.run, int) and isinstance(h.reply_to, int)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise RejectedError("malformed", f"unreadable header ({exc})") from None
        if not ok or not all(isinstance(v, str) for v in (h.suite, h.kind, h.salt, h.phase)):
            raise RejectedError("malformed", "header fields have the wrong types")
        return h


@dataclass
class Channel:
    """One end point's conversation with one peer key during one run.

    ``state()``/``from_state`` let an owner keep it in Flower's node ``Context`` between
    messages (a SuperNode may start a fresh ClientApp process for each one).
    """

    me: X25519PrivateKey
    peer: X25519PublicKey
    run: int
    suite: str
    send_salt: str = field(default_factory=lambda: os.urandom(16).hex())
    send_seq: int = 0
    recv_salt: str = ""
    recv_last: int = 0
    recv_seen: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"encryption={self.suite!r}; choose one of {', '.join(SUITES)}")
        self.my_key, self.peer_key = fingerprint(self.me.public_key()), fingerprint(self.peer)
        self._shared = self.me.exchange(self.peer)
        self._aeads: dict[tuple[str, str], object] = {}

    def _aead(self, salt: str, sender_key: str, recipient_key: str):  # noqa: ANN202
        cached = self._aeads.get((salt, sender_key))
        if cached is None:
            info = f"{VERSION}|{self.suite}|run={self.run}|{sender_key}>{recipient_key}"
            key = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(salt), info=info.encode()
            ).derive(self._shared)
            cached = self._aeads[(salt, sender_key)] = _AEADS[self.suite](key)
        return cached

    def seal(
        self,
        kind: str,
        phase: str,
        sender: str,
        recipient: str,
        plaintext: bytes,
        reply_to: int = -1,
    ) -> tuple[bytes, bytes]:
        """Encrypt under this session's key; returns (header, ciphertext)."""
        self.send_seq += 1
        h = Header(
            self.suite, self.run, kind, phase, sender, recipient, self.my_key, self.peer_key,
            self.send_salt, self.send_seq, reply_to,
        )  # fmt: skip
        ad = h.to_bytes()
        if self.suite == "none":
            return ad, plaintext
        nonce = self.send_seq.to_bytes(12, "big")
        return ad, self._aead(h.salt, h.sender_key, h.recipient_key).encrypt(nonce, plaintext, ad)  # type: ignore[attr-defined]

    def open(
        self, header: bytes, body: bytes, kind: str, sender: str, recipient: str
    ) -> tuple[Header, bytes]:
        """Check and decrypt; state changes only once the message is authentic and fresh."""
        h = Header.from_bytes(header)
        if h.suite != self.suite:
            raise RejectedError("wrong-suite", f"sealed with {h.suite}, this run uses {self.suite}")
        if h.run != self.run:
            raise RejectedError("wrong-run", f"bound to run {h.run}, this is run {self.run}")
        if h.recipient_key != self.my_key:
            raise RejectedError(
                "wrong-key", f"addressed to key {h.recipient_key}, not {self.my_key}"
            )
        if h.sender_key != self.peer_key:
            raise RejectedError(
                "unknown-sender", f"sender key {h.sender_key} is not {self.peer_key}"
            )
        if (h.kind, h.sender, h.recipient) != (kind, sender, recipient):
            raise RejectedError(
                "misrouted",
                f"header says {h.kind} {h.sender}->{h.recipient}, transport says "
                f"{kind} {sender}->{recipient}",
            )
        if self.recv_salt and h.salt != self.recv_salt:
            raise RejectedError("session-changed", "the sender's session changed within this run")
        if h.seq <= self.recv_last:
            reason = "replay" if h.seq in self.recv_seen else "out-of-order"
            raise RejectedError(reason, f"seq {h.seq}, last accepted {self.recv_last}")
        if self.suite == "none":
            plaintext = body
        else:
            try:
                aead = self._aead(h.salt, h.sender_key, h.recipient_key)
                plaintext = aead.decrypt(h.seq.to_bytes(12, "big"), body, header)  # type: ignore[attr-defined]
            except (InvalidTag, ValueError, OverflowError):
                raise RejectedError("authentication-failed", "AEAD tag mismatch") from None
        self.recv_salt, self.recv_last = h.salt, h.seq
        self.recv_seen = [*self.recv_seen[-255:], h.seq]
        return h, plaintext

    def state(self) -> dict[str, object]:
        return {
            "send_salt": self.send_salt,
            "send_seq": self.send_seq,
            "recv_salt": self.recv_salt,
            "recv_last": self.recv_last,
            "recv_seen": list(self.recv_seen),
        }

    @classmethod
    def from_state(
        cls,
        me: X25519PrivateKey,
        peer: X25519PublicKey,
        run: int,
        suite: str,
        state: dict[str, object],
    ) -> Channel:
        return cls(me, peer, run, suite, **state)  # type: ignore[arg-type]
