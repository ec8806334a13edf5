"""Two tasks of one run at once, as a Flower 1.42 SuperNode runs them.

A SuperNode starts a process per message and hands it a *copy* of the node's stored
Context (last writer wins): a service re-send after ``timeout`` while the first copy still
runs, or a relay that delays a message, puts two tasks of one run side by side. Here each
task is a thread with its own deep copy of one Context, started together at a barrier.
"""

from __future__ import annotations

import copy

from flwr.app import Message

from azsl_flower.owner.budget import queries_used
from azsl_flower.wire import schema
from azsl_flower.wire.crypto import Header
from tests.hostile import Owner, deliver_at_once, envelope_of, query_payload


def _at_once(owner: Owner, messages: list[Message]) -> list[Message]:
    """Deliver ``messages`` concurrently, each to its own copy of the owner's Context."""
    return deliver_at_once([owner] * len(messages), messages)


def test_concurrent_tasks_never_seal_two_replies_under_one_key_and_nonce(tmp_path):
    owner = Owner(tmp_path)
    sealed = [owner.deliver(owner.request(schema.SETUP))]
    assert owner.peek(schema.SETUP, sealed[0]).answers
    # the first copy of a request and the service's re-send of it, handled side by side
    first = owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 32)], "generator-1")
    resent = owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 32)], "generator-1")
    both = _at_once(owner, [first, resent])
    sealed += [r for r in both if not r.has_error()]
    headers = [Header.from_bytes(envelope_of(r)[0][0]) for r in sealed]
    # every sealed reply under its own (salt -> key, seq -> nonce): none shared
    assert len({(h.salt, h.seq) for h in headers}) == len(headers) == len(sealed)
    assert len({h.salt for h in headers}) == len(headers)  # a fresh key per message
    assert len({h.seq for h in headers}) == len(headers)  # and the counter never forks
    # the service takes the answer to its latest request; the other one, if sealed, is stale
    got = [owner.open(schema.FEEDBACK, r) for r in both if r.metadata.reply_to_message_id]
    answered = [g for g in got if g.answers]
    assert len(answered) <= 1


def test_concurrent_requests_cannot_go_over_the_query_budget(tmp_path):
    """Five 600-sample requests at once against a budget of 1000 with 100 used."""
    owner = Owner(tmp_path, query_budget=1000)
    assert owner.ask(schema.SETUP).answers
    assert owner.ask(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 100)]).answers
    assert queries_used(owner.ctx) == 100
    asks = [
        owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 600, seed=i)], f"g-{i}")
        for i in range(5)
    ]
    replies = [owner.peek(schema.FEEDBACK, r) for r in _at_once(owner, asks)]
    answered = [r for r in replies if r.answers]
    assert len(answered) == 1  # 100 + 600 fits, a second 600 never does
    for r in replies:
        if not r.answers:  # refused for budget (sealed), or a stale copy (replay window)
            assert (r.refusal is not None and r.refusal.code == "budget") or r.rejection in (
                "out-of-order",
                "replay",
            ), r.error
    assert queries_used(owner.ctx) == 700  # on the owner's disk, not in a Context copy
    # a restarted SuperNode (a fresh Context) still knows what this run used
    owner.ctx = copy.deepcopy(owner.ctx)
    owner.ctx.state.array_records.clear()
    owner.ctx.state.config_records.clear()
    again = owner.ask(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 400)])
    assert again.refusal is not None and (again.refusal.used, again.refusal.asked) == (700, 400)
    assert owner.ask(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 300)]).answers
    assert queries_used(owner.ctx) == 1000
