"""The properties the encryption tests name, tested so that they fail when the property goes.

Each test here was checked against a mutant of ``azsl_flower/wire/crypto.py`` (see the
report of issue 12): the run id or the direction taken out of the HKDF info, the replay
window dropped, plaintext sent with a zero tag.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from azsl_flower.wire import codec, crypto, schema
from azsl_flower.wire.crypto import Channel, RejectedError, generate_keypair
from tests.hostile import Owner, envelope_of, evaluate_payload, query_payload

PLAIN = b"generated features and the teacher's answers about them" * 4


@pytest.mark.parametrize("suite", ["aes-256-gcm", "chacha20-poly1305"])
def test_a_key_is_bound_to_its_run_and_direction(monkeypatch, suite):
    """With the salt pinned (as if two messages drew the same one), only the run and the
    direction can keep two keys apart; the same plaintext must then encrypt differently."""
    monkeypatch.setattr(crypto, "fresh_salt", lambda: "5a" * 16)
    a, b = generate_keypair(), generate_keypair()

    def stream(me, peer, run: int) -> bytes:  # noqa: ANN001
        """The ciphertext without its tag: plaintext XOR keystream(key, nonce). (The tag
        also covers the header, which names run and keys, so it differs anyway.)"""
        body = Channel(me, peer.public_key(), run, suite).seal("k", "p", "s", "r", PLAIN)[1]
        return body[:-16]

    assert stream(a, b, 7) == stream(a, b, 7)  # same run, direction, salt, seq: same key
    assert stream(a, b, 7) != stream(a, b, 8)  # another run: another key
    assert stream(a, b, 7) != stream(b, a, 7)  # the other direction (X25519 is symmetric)


def test_sealed_messages_hold_no_plaintext(monkeypatch, tmp_path):
    """What crosses Flower, both ways, for every message kind: never the plaintext."""
    plaintexts: list[bytes] = []
    real = codec.to_bytes

    def spy(rd):  # noqa: ANN001, ANN202
        out = real(rd)
        plaintexts.append(out)
        return out

    monkeypatch.setattr(codec, "to_bytes", spy)
    owner = Owner(tmp_path)
    bodies = []
    for kind, payloads in (
        (schema.SETUP, None),
        (schema.FEEDBACK, [query_payload(schema.FEEDBACK, 16)]),
        (schema.VERIFY, [query_payload(schema.VERIFY, 16)]),
        (schema.EVALUATE, [evaluate_payload(np.zeros(1))]),
    ):
        request = owner.request(kind, payloads)
        reply = owner.deliver(request)
        assert owner.open(kind, reply).answers, kind
        bodies += [b for _, b in envelope_of(request) + envelope_of(reply)]
    assert len(plaintexts) >= 8 and len(bodies) >= 8
    for p in plaintexts:
        for i in range(0, len(p) - 32, max(1, len(p) // 8)):
            window = p[i : i + 32]
            assert not any(window in b for b in bodies), "plaintext bytes crossed the wire"


def test_an_owner_refuses_a_replayed_request(tmp_path):
    """A relay delivers one authentic request twice: the owner answers it once."""
    owner = Owner(tmp_path)
    assert owner.ask(schema.SETUP).answers
    request = owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 8)])
    first = owner.deliver(copy.deepcopy(request))
    assert owner.open(schema.FEEDBACK, first).answers
    again = owner.deliver(copy.deepcopy(request))
    assert again.has_error() and "azsl-rejected:replay" in again.error.reason


def test_the_service_refuses_a_replayed_reply(tmp_path):
    """A relay hands the service an authentic reply again, now or in a later round trip."""
    owner = Owner(tmp_path)
    assert owner.ask(schema.SETUP).answers
    first = owner.deliver(owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 8)]))
    assert owner.open(schema.FEEDBACK, copy.deepcopy(first)).answers
    with pytest.raises(RejectedError):  # the same round trip: already answered
        owner.open(schema.FEEDBACK, copy.deepcopy(first))
    later = owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 8)])
    with pytest.raises(RejectedError) as exc:  # a later round trip: not an answer to it
        owner.open(schema.FEEDBACK, copy.deepcopy(first))
    assert exc.value.reason in ("out-of-order", "replay", "misrouted")
    assert owner.open(schema.FEEDBACK, owner.deliver(later)).answers


def test_a_late_answer_is_never_taken_for_a_later_request(tmp_path):
    """A relay holds back the answer to one request and delivers it when the service is
    waiting for another: each answer is bound to the request it answers (``reply_to``)."""
    owner = Owner(tmp_path)
    assert owner.ask(schema.SETUP).answers
    pool = [query_payload(schema.FEEDBACK, 8, seed=1)]
    held_back = owner.deliver(owner.request(schema.FEEDBACK, pool, "generator-1"))
    resent = owner.request(schema.FEEDBACK, pool, "generator-1")  # the service's re-send
    answer_to_resend = owner.deliver(resent)
    with pytest.raises(RejectedError, match="answers request"):
        owner.open(schema.FEEDBACK, held_back)  # not the answer to the re-send
    owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 8, seed=2)], "generator-2")
    with pytest.raises(RejectedError, match="answers request"):  # a later round trip
        owner.open(schema.FEEDBACK, answer_to_resend)


def test_flower_run_ids_beyond_int64_are_accepted():
    """Flower's run ids are unsigned 64-bit: a strict header must still take them."""
    a, b = generate_keypair(), generate_keypair()
    for run in (2**63 + 5, 2**64 - 1):
        sender = Channel(a, b.public_key(), run, "aes-256-gcm")
        receiver = Channel(b, a.public_key(), run, "aes-256-gcm")
        header, body = sender.seal("evaluate", "e", "service", "5", PLAIN)
        assert receiver.open(header, body, "evaluate", "service", "5")[1] == PLAIN
