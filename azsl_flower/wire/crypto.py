"""End-to-end authenticated encryption between the AI service and each data owner.

Flower's TLS protects each hop, but the SuperLink relays and stores message content in
the clear. Here every AZSL payload is sealed with an AEAD before it enters a Flower
message, so only the two end points can read or alter it. Nothing is hand-rolled: the
``cryptography`` package provides X25519, HKDF-SHA256, AES-256-GCM and ChaCha20-Poly1305.

Keys. Every node has a long-term X25519 key pair in PEM files (``azsl-flower keys
generate``). The static-static shared secret authenticates both ends implicitly: only the
holders of the two private keys can derive it.

One key per message. The sender draws a fresh 16-byte random ``salt`` for every message;
the AEAD key is HKDF-SHA256(shared secret, salt, info = protocol version, suite, run id,
sender key → recipient key). Keys therefore differ per run and per direction, and two
messages share a key only if they drew the same 128-bit salt (probability 2^-128 per
pair), so a nonce can never repeat under one key, not even when two processes seal with
copies of one state (a SuperNode runs every message in its own process with a copy of the
node's Context). The 96-bit nonce is the sender's message counter ``seq``.

Associated data is the whole clear-text header: suite, run id, message kind, phase,
sender and receiver node, both key fingerprints, salt, ``seq`` and the ``seq`` it answers.
A receiver checks the header against what it expects, rejects any ``seq`` not above the
last one it accepted (replay, reordering), and commits its state only after the tag
verified. A rejected message raises :class:`RejectedError` with a reason; it is never
decrypted to anything usable. Headers are parsed strictly (size, JSON depth, every field's
type), so a hostile relay gets a rejection, never an exception in the receiver.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from azsl_flower.common.config import CHOICES

__all__ = [
    "SUITES",
    "REASONS",
    "RejectedError",
    "KeyFileError",
    "KeyModeWarning",
    "Header",
    "Channel",
    "fingerprint",
    "fresh_salt",
    "generate_keypair",
    "write_keypair",
    "write_new_file",
    "load_private_key",
    "load_public_key",
    "load_public_keys",
]

VERSION = "azsl-flower/2"  # 2: a fresh HKDF salt per message
_AEADS = {"aes-256-gcm": AESGCM, "chacha20-poly1305": ChaCha20Poly1305}
SUITES = CHOICES["encryption"]  # the run config's list, written once (common/ is below wire/)
if set(SUITES) != {*_AEADS, "none"}:  # a suite named there has a cipher here, and back
    raise ImportError(f"run-config encryption choices {SUITES} do not match {sorted(_AEADS)}")
REASONS = (
    "malformed",  # the envelope or header cannot be parsed
    "wrong-suite",  # sealed with another cipher suite than this run uses
    "wrong-run",  # bound to another run id
    "wrong-key",  # not addressed to this end point's key
    "unknown-sender",  # sender key not on the allow-list (or not the one bound to this node)
    "misrouted",  # kind, sender or receiver node differ from what the transport says
    "no-session",  # an owner without state for this run accepts only a set-up request
    "replay",  # this seq was already accepted
    "out-of-order",  # seq below the last accepted one
    "authentication-failed",  # AEAD tag mismatch: tampered, or sealed under another key
    "invalid-reply",  # authentic, but not an answer to what was asked (shapes, ranges, ids)
)
MAX_HEADER_BYTES = 4096  # a header is ~400 bytes; anything larger is not ours
_SALT_BYTES = 16


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
    fails if it exists, also as a dangling symlink (O_EXCL never follows one), so nothing is
    ever overwritten and nothing is written outside the folder asked for."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
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
        if p.exists() or p.is_symlink():  # a dangling symlink would lead outside --out
            raise KeyFileError(
                f"{p} already exists; choose another --name or --out (keys are never overwritten)"
            )
    key = key or generate_keypair()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        write_new_file(priv_path, pem, 0o600)
        write_new_file(pub_path, public, 0o644)
    except FileExistsError as exc:  # appeared between the check and the write
        raise KeyFileError(f"{exc.filename} already exists; keys are never overwritten") from None
    return priv_path


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise KeyFileError(f"{what} {p} does not exist; create it with `azsl-flower keys generate`")
    return p.read_bytes()


def load_private_key(path: str | Path) -> X25519PrivateKey:
    """An X25519 private key; warns when others than its owner may read or change it."""
    try:
        key = serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}; AZSL needs an X25519 key")
    mode = stat.S_IMODE(Path(path).expanduser().stat().st_mode)
    if mode & 0o077:
        warnings.warn(
            f"private key {path} has mode {mode:04o}: others on this machine can read it; "
            f"`chmod 600 {path}`",
            KeyModeWarning,
            stacklevel=2,
        )
    return key


class KeyModeWarning(UserWarning):
    """A private key file others can read (it still loads: the operator decides)."""


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
        """Parse strictly: any deviation is a ``malformed`` rejection, never another error."""
        if len(raw) > MAX_HEADER_BYTES:
            raise RejectedError("malformed", f"header of {len(raw)} bytes")
        try:
            d = json.loads(raw.decode())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RejectedError("malformed", f"unreadable header ({type(exc).__name__})") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise RejectedError("malformed", "header fields are not the expected ones")
        ints = ("run", "seq", "reply_to")
        for name in names:
            value = d[name]
            if name in ints:
                ok = isinstance(value, int) and not isinstance(value, bool) and -1 <= value < 2**64
            else:
                ok = isinstance(value, str) and len(value) <= 256
            if not ok:
                raise RejectedError("malformed", f"header field {name!r} has the wrong type")
        h = cls(**d)
        if h.seq < 1 or not _is_hex(h.salt, _SALT_BYTES):
            raise RejectedError("malformed", "header sequence number or salt is invalid")
        return h


def _is_hex(text: str, nbytes: int) -> bool:
    try:
        return len(bytes.fromhex(text)) == nbytes
    except ValueError:
        return False


def fresh_salt() -> str:
    """A new random HKDF salt: one per sealed message (tests replace it to pin keys)."""
    return os.urandom(_SALT_BYTES).hex()


@dataclass
class Channel:
    """One end point's conversation with one peer key during one run.

    ``state()``/``from_state`` let an owner keep it on its disk between messages (a
    SuperNode starts a fresh ClientApp process for each one).
    """

    me: X25519PrivateKey
    peer: X25519PublicKey
    run: int
    suite: str
    send_seq: int = 0
    recv_last: int = 0
    recv_seen: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f"encryption={self.suite!r}; choose one of {', '.join(SUITES)}")
        self.my_key, self.peer_key = fingerprint(self.me.public_key()), fingerprint(self.peer)
        self._shared = self.me.exchange(self.peer)

    def _aead(self, salt: str, sender_key: str, recipient_key: str):  # noqa: ANN202
        """The AEAD of one message: its key is bound to run, suite, direction and salt."""
        info = f"{VERSION}|{self.suite}|run={self.run}|{sender_key}>{recipient_key}"
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(salt), info=info.encode()
        ).derive(self._shared)
        return _AEADS[self.suite](key)

    def seal(
        self,
        kind: str,
        phase: str,
        sender: str,
        recipient: str,
        plaintext: bytes,
        reply_to: int = -1,
    ) -> tuple[bytes, bytes]:
        """Encrypt under a key of its own (fresh salt); returns (header, ciphertext)."""
        self.send_seq += 1
        h = Header(
            self.suite, self.run, kind, phase, sender, recipient, self.my_key, self.peer_key,
            fresh_salt(), self.send_seq, reply_to,
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
        self.recv_last = h.seq
        self.recv_seen = [*self.recv_seen[-255:], h.seq]
        return h, plaintext

    def state(self) -> dict[str, object]:
        return {
            "send_seq": self.send_seq,
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
