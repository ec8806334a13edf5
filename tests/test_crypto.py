"""End-to-end encryption: round trips, fuzzed ciphertexts, replay, reordering, wrong keys."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from azsl_flower.owner.ledger import LedgerError
from azsl_flower.owner.session import open_session
from azsl_flower.tools.cli import main as cli
from azsl_flower.wire import codec, schema
from azsl_flower.wire.channels import SERVICE, ServiceSecurity
from azsl_flower.wire.crypto import (
    REASONS,
    Channel,
    Header,
    KeyFileError,
    RejectedError,
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_keys,
    write_keypair,
)
from tests.conftest import KIND_CASES, make_payload

SUITES = ["aes-256-gcm", "chacha20-poly1305"]


@pytest.fixture
def task_identity():
    """Flower Messages can only be built inside a task; pretend to be one."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 3, 1, 1


def _pair(suite: str = "aes-256-gcm", run: int = 7) -> tuple[Channel, Channel]:
    a, b = generate_keypair(), generate_keypair()
    return Channel(a, b.public_key(), run, suite), Channel(b, a.public_key(), run, suite)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize(("name", "direction"), KIND_CASES)
def test_every_message_kind_round_trips_sealed(suite, name, direction):
    kind = schema.KINDS[name]
    rd = schema.encode(kind, direction, **make_payload(kind, direction))
    plain = codec.to_bytes(codec.bundle([rd, rd]))
    svc, own = _pair(suite)
    header, body = svc.seal(name, "phase-1", SERVICE, "5", plain)
    assert plain not in body and len(body) == len(plain) + 16  # the AEAD tag
    h, out = own.open(header, body, name, SERVICE, "5")
    assert out == plain and h.seq == 1
    parts = codec.unbundle(codec.from_bytes(out))
    again = [schema.decode(kind, direction, p) for p in parts]
    want = schema.decode(kind, direction, rd)
    for got in again:
        assert got.scalars == want.scalars
        for k, v in want.arrays.items():
            np.testing.assert_array_equal(got.arrays[k], v)


@pytest.mark.parametrize("suite", SUITES)
def test_fuzzed_ciphertexts_are_never_accepted(suite):
    """>= 1000 single-byte mutations over nonce-bearing header, body and tag: none accepted."""
    rng = np.random.default_rng(0)
    accepted, reasons = 0, set()
    svc, own = _pair(suite)
    plain = rng.standard_normal(64).astype(np.float32).tobytes()
    header, body = svc.seal("query.feedback", "generator-1", SERVICE, "5", plain)
    regions = {
        "header": (0, len(header)),  # carries salt and seq (the nonce) and is the AD
        "body": (0, len(body) - 16),
        "tag": (len(body) - 16, len(body)),
    }
    for trial in range(1200):
        region = list(regions)[trial % 3]
        lo, hi = regions[region]
        h, b = bytearray(header), bytearray(body)
        target = h if region == "header" else b
        i = int(rng.integers(lo, hi))
        target[i] ^= int(rng.integers(1, 256))
        try:
            own.open(bytes(h), bytes(b), "query.feedback", SERVICE, "5")
            accepted += 1
        except RejectedError as exc:
            reasons.add(exc.reason)
    assert accepted == 0
    assert "authentication-failed" in reasons
    # truncation and extension are refused too, and the genuine message still opens after it all
    for b in (body[:-1], body + b"\0", b""):
        with pytest.raises(RejectedError):
            own.open(header, b, "query.feedback", SERVICE, "5")
    assert own.open(header, body, "query.feedback", SERVICE, "5")[1] == plain


def test_replay_and_reordering_are_rejected():
    svc, own = _pair()
    m1, m2, m3 = (svc.seal("query.verify", "v", SERVICE, "5", b"%d" % i) for i in range(3))
    own.open(*m1, "query.verify", SERVICE, "5")
    own.open(*m3, "query.verify", SERVICE, "5")
    with pytest.raises(RejectedError) as replay:
        own.open(*m3, "query.verify", SERVICE, "5")
    assert replay.value.reason == "replay"
    with pytest.raises(RejectedError) as late:
        own.open(*m2, "query.verify", SERVICE, "5")
    assert late.value.reason == "out-of-order"


def test_header_binds_kind_nodes_run_and_session():
    svc, own = _pair(run=7)
    msg = svc.seal("query.feedback", "generator-1", SERVICE, "5", b"x")
    for kind, sender, recipient in [
        ("query.verify", SERVICE, "5"),  # another kind
        ("query.feedback", SERVICE, "6"),  # delivered to another node
        ("query.feedback", "9", "5"),  # from someone else
    ]:
        with pytest.raises(RejectedError) as exc:
            own.open(*msg, kind, sender, recipient)
        assert exc.value.reason == "misrouted"
    other_run = Channel(own.me, svc.me.public_key(), 8, "aes-256-gcm")
    with pytest.raises(RejectedError, match="wrong-run"):
        other_run.open(*msg, "query.feedback", SERVICE, "5")
    other_suite = Channel(own.me, svc.me.public_key(), 7, "chacha20-poly1305")
    with pytest.raises(RejectedError, match="wrong-suite"):
        other_suite.open(*msg, "query.feedback", SERVICE, "5")
    own.open(*msg, "query.feedback", SERVICE, "5")
    restarted = Channel(svc.me, own.me.public_key(), 7, "aes-256-gcm")  # lost its counter
    with pytest.raises(RejectedError, match="replay"):
        own.open(
            *restarted.seal("query.feedback", "g", SERVICE, "5", b"y"),
            "query.feedback",
            SERVICE,
            "5",
        )


def test_wrong_and_unknown_keys_are_rejected():
    svc, own = _pair()
    stranger = Channel(generate_keypair(), own.me.public_key(), 7, "aes-256-gcm")
    with pytest.raises(RejectedError) as exc:
        own.open(*stranger.seal("evaluate", "e", SERVICE, "5", b"x"), "evaluate", SERVICE, "5")
    assert exc.value.reason == "unknown-sender"
    elsewhere = Channel(svc.me, generate_keypair().public_key(), 7, "aes-256-gcm")
    with pytest.raises(RejectedError) as exc:
        own.open(*elsewhere.seal("evaluate", "e", SERVICE, "5", b"x"), "evaluate", SERVICE, "5")
    assert exc.value.reason == "wrong-key"
    # a forged header that names the right keys still fails on the tag
    header, body = stranger.seal("evaluate", "e", SERVICE, "5", b"x")
    forged = header.replace(stranger.my_key.encode(), svc.my_key.encode())
    with pytest.raises(RejectedError) as exc:
        own.open(forged, body, "evaluate", SERVICE, "5")
    assert exc.value.reason == "authentication-failed"
    assert set(REASONS) >= {"replay", "out-of-order", "wrong-key", "unknown-sender"}


def test_nonces_never_repeat_and_keys_differ_per_direction():
    svc, own = _pair()
    seen = set()
    for i in range(50):
        h, _ = svc.seal("query.feedback", "g", SERVICE, "5", b"")
        hb = own.seal("query.feedback", "g", "5", SERVICE, b"", reply_to=i + 1)[0]
        for raw in (h, hb):
            hd = Header.from_bytes(raw)
            seen.add((hd.sender_key, hd.salt, hd.seq))
    assert len(seen) == 100  # (key, nonce) pairs all distinct
    # same plaintext twice -> different ciphertexts
    assert (
        svc.seal("x", "p", SERVICE, "5", b"same")[1] != svc.seal("x", "p", SERVICE, "5", b"same")[1]
    )


def _owner_context(tmp_path, node_id: int, owner_key, service_pub, run: int = 3) -> Context:
    return Context(
        run_id=run,
        node_id=node_id,
        node_config={
            "owner-key": str(owner_key),
            "service-pub": str(service_pub),
            "cache-dir": str(tmp_path / "owner-cache"),
        },
        state=RecordDict(),
        run_config={"encryption": "aes-256-gcm"},
    )


def test_service_and_owner_endpoints_bind_keys_and_keep_state(tmp_path, task_identity):
    write_keypair(tmp_path, "service")
    write_keypair(tmp_path / "owners", "owner-a")
    write_keypair(tmp_path / "owners", "owner-b")
    svc = ServiceSecurity.from_files(
        "aes-256-gcm", 3, str(tmp_path / "service.key"), str(tmp_path / "owners")
    )
    ctx = _owner_context(tmp_path, 11, tmp_path / "owners/owner-b.key", tmp_path / "service.pub")
    rd = schema.encode(schema.SETUP, "request", settings={"k": 1})
    for rnd in range(3):
        sealed = svc.seal(11, "query.setup", f"r{rnd}", [rd])
        # before the node answered once, the request is sealed for every unbound key
        assert len(codec.open_envelope(sealed)) == (2 if rnd == 0 else 1)
        msg = Message(content=sealed, dst_node_id=11, message_type="query.setup")
        with open_session(ctx) as s:  # a fresh ClientApp per message: state on the owner's disk
            request, parts = s.security.open(msg, "query.setup")
            assert request is not None and request.phase == f"r{rnd}" and len(parts) == 1
            reply = s.security.seal("query.setup", request, parts)
        assert len(svc.open(11, "query.setup", reply)) == 1
    assert svc.bound == {
        11: fingerprint(load_private_key(tmp_path / "owners/owner-b.key").public_key())
    }
    # a second node cannot answer with owner-b's key, and a stale reply is refused
    with pytest.raises(RejectedError):
        svc.open(12, "query.setup", reply)
    with pytest.raises(RejectedError) as exc:
        svc.open(11, "query.setup", reply)
    assert exc.value.reason in ("misrouted", "replay")


def test_a_restarted_supernode_goes_on_with_its_session(tmp_path, task_identity):
    """Node state dies with the SuperNode process; the copy on the owner's disk does not."""
    write_keypair(tmp_path, "service")
    write_keypair(tmp_path, "owner")
    svc = ServiceSecurity.from_files(
        "aes-256-gcm", 3, str(tmp_path / "service.key"), str(tmp_path / "owner.pub")
    )
    rd = schema.encode(schema.SETUP, "request", settings={})

    def ask(ctx: Context, phase: str) -> RecordDict:
        sealed = svc.seal(11, "query.setup", phase, [rd])
        with open_session(ctx) as s:
            request, parts = s.security.open(
                Message(sealed, dst_node_id=11, message_type="query.setup"), "query.setup"
            )
            assert svc.open(11, "query.setup", s.security.seal("query.setup", request, parts))
        return sealed

    first = ask(_owner_context(tmp_path, 11, tmp_path / "owner.key", tmp_path / "service.pub"), "a")
    restarted = _owner_context(tmp_path, 11, tmp_path / "owner.key", tmp_path / "service.pub")
    ask(restarted, "b")  # the same sequence goes on
    with (  # and the replay window survived the restart
        pytest.raises(RejectedError) as exc,
        open_session(
            _owner_context(tmp_path, 11, tmp_path / "owner.key", tmp_path / "service.pub")
        ) as s,
    ):
        s.security.open(Message(first, dst_node_id=11, message_type="query.setup"), "query.setup")
    assert exc.value.reason == "replay"
    state = list((tmp_path / "owner-cache" / "runs").glob("run-3-*.json"))
    assert len(state) == 1 and stat.S_IMODE(os.stat(state[0]).st_mode) == 0o600
    state[0].write_text("{not json")
    with (
        pytest.raises(LedgerError, match="delete it to start a new session"),
        open_session(
            _owner_context(tmp_path, 11, tmp_path / "owner.key", tmp_path / "service.pub")
        ),
    ):
        pass


def test_owner_refuses_a_cleartext_message_when_encryption_is_on(tmp_path, task_identity):
    write_keypair(tmp_path, "service")
    write_keypair(tmp_path, "owner")
    ctx = _owner_context(tmp_path, 11, tmp_path / "owner.key", tmp_path / "service.pub")
    plain = ServiceSecurity("none", 3).seal(
        11, "query.setup", "s", [schema.encode(schema.SETUP, "request", settings={})]
    )
    with pytest.raises(RejectedError) as exc, open_session(ctx) as s:
        s.security.open(Message(plain, dst_node_id=11, message_type="query.setup"), "query.setup")
    assert exc.value.reason == "malformed"


def test_key_files_cli_never_overwrites(tmp_path, capsys):
    assert cli(["keys", "generate", "--out", str(tmp_path), "--name", "owner-1"]) == 0
    out = capsys.readouterr().out
    key = tmp_path / "owner-1.key"
    fp = fingerprint(load_private_key(key).public_key())
    assert fp in out
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    before = key.read_bytes()
    assert cli(["keys", "generate", "--out", str(tmp_path), "--name", "owner-1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert key.read_bytes() == before
    assert cli(["keys", "fingerprint", str(tmp_path / "owner-1.pub")]) == 0
    assert fp in capsys.readouterr().out
    assert list(load_public_keys(str(tmp_path))) == [fp]


def test_bad_key_files_fail_clearly(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_private_key(tmp_path / "nope.key")
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(KeyFileError, match="PEM"):
        load_private_key(tmp_path / "junk.key")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError, match="no \\*.pub"):
        load_public_keys(str(tmp_path / "empty"))
    with pytest.raises(KeyFileError, match="plain file name"):
        write_keypair(tmp_path, "../escape")


def test_serialised_payloads_refuse_truncation_and_trailing_bytes():
    rd = schema.encode(schema.FEEDBACK, "request", **make_payload(schema.FEEDBACK, "request"))
    raw = codec.to_bytes(codec.bundle([rd]))
    assert codec.to_bytes(codec.from_bytes(raw)) == raw
    for bad in (raw[:-1], raw + b"\0", raw[:5], b"", b"\0" * 8 + b"{"):
        with pytest.raises(schema.ProtocolError, match="not a serialised RecordDict"):
            codec.from_bytes(bad)
