"""Delivery: one request to its owners, re-sent to those that failed, until each answered,
refused for budget, or was dropped.

It joins the transport (which moves and opens messages) and the roster (which decides who
stays): the only place a failed message turns into a retry or a drop.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp import Grid

from azsl_flower.wire import schema
from strategies.requests import Request
from strategies.roster import Roster
from strategies.transport import Transport

__all__ = ["Delivery"]


@dataclass
class Delivery:
    """Sends requests through ``transport``; ``roster`` decides retries, skips and drops."""

    transport: Transport
    roster: Roster
    settings: dict[str, object]  # run settings every request carries (owners rebuild state)
    max_retries: int

    def ask(self, grid: Grid, request: Request) -> dict[int, list[schema.Payload]]:
        """Every payload of ``request`` to each of its owners, sealed in one message per
        owner; the answers by node, for the owners that answered.

        A message refused by either end, answered with an error (a Flower error reply, or
        the owner's sealed ``error`` refusal: it failed answering), or not answered within
        ``timeout`` is re-sent, freshly sealed, up to ``max-retries`` times; an owner that
        still fails is dropped (the roster fails the run below quorum). An owner that
        refuses because of its query budget is only skipped this time: it has not failed.
        One that refuses under its policy is dropped at once: asking again will not help.
        """
        kind, phase, roster = request.kind, request.phase, self.roster
        parts = [
            schema.encode(kind, "request", settings=self.settings, **p)  # type: ignore[arg-type]
            for p in request.payloads
        ]
        answers: dict[int, list[schema.Payload]] = {}
        why: dict[int, str] = {}  # node -> why its last attempt failed
        todo, offline = list(request.nodes), []
        for attempt in range(self.max_retries + 1):
            if offline:  # a restarting SuperNode: re-send once it is back, not straight away
                self.transport.await_nodes(grid, offline, phase)
            unreachable = [n for n in todo if not self.transport.security.addressable(n)]
            if unreachable:  # no allow-listed key left for it: not one of our owners
                reason = "no allow-listed owner key is left for it (not one of our owners)"
                roster.drop(unreachable, phase, dict.fromkeys(unreachable, reason))
                todo = [n for n in todo if n not in unreachable]
                if not todo:
                    break
            outcomes = self.transport.exchange(grid, kind, phase, parts, todo, request.check)
            todo, offline, refused = [], [], {}
            for node, out in outcomes.items():
                if out.answered:
                    roster.count_used(node, request.samples)
                if out.answers is not None:
                    answers[node] = out.answers
                    continue
                if out.refusal is not None:
                    roster.budget_refused(node, phase, out.refusal)
                    continue
                if out.failure == "policy":
                    roster.fail(node, phase, "policy", out.reason)
                    refused[node] = out.reason
                    continue
                why[node] = out.reason
                if out.failure != "rejected":  # rejections are counted by the transport
                    roster.fail(
                        node, phase, "timeout" if out.failure == "timeout" else "error", out.reason
                    )
                if out.failure == "offline":
                    offline.append(node)
                todo.append(node)
            if refused:
                roster.drop(list(refused), phase, refused)
            if not todo:
                break
            if attempt < self.max_retries:
                self.transport.traffic.retries += len(todo)
        if todo:
            roster.drop(todo, phase, why)
        return {n: answers[n] for n in roster.live if n in answers}
