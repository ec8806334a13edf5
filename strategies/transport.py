"""The service's transport: seal → (relay faults) → push/poll → open, with byte counts.

Like FLSim's Channel, it only moves messages and counts what crossed; it decides nothing
about owners. :meth:`Transport.exchange` sends one sealed message per owner, waits up to
``timeout`` for the replies, and returns one :class:`Outcome` per owner: its decoded
answers, or why there are none (time-out, error reply, rejection by either end, budget
refusal, SuperNode unavailable). What to do with a failure is the roster's business.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower.service.results import TrafficStats
from azsl_flower.wire import codec, errors, schema
from azsl_flower.wire.channels import ServiceSecurity
from azsl_flower.wire.crypto import RejectedError
from strategies.checks import Check, ReplyError
from strategies.faults import FaultInjector
from strategies.roster import OwnerError

__all__ = ["Outcome", "Transport"]


@dataclass
class Outcome:
    """One owner's part of a round trip: ``answers``, or a ``failure`` kind and its reason.

    Failure kinds: ``timeout`` (no reply, or the grid did not queue the message),
    ``error`` (an error reply: unauthenticated, so never trusted for more than "failed"),
    ``rejected`` (refused by the owner, or by us: unauthentic, unreadable, off the schema
    or not an answer to the request; ``rejection`` is the reason code), ``budget`` (the
    owner's sealed refusal for its query budget; ``refusal`` = (budget, used, asked)),
    ``policy`` (the owner's sealed refusal under its policy: asking again will not help),
    ``error`` also for the owner's sealed ``error`` refusal (it failed answering: re-sent,
    then dropped, like an error reply),
    ``offline`` (Flower says the SuperNode is unavailable: restarting). ``answered``: the
    owner may have done the work.
    """

    answers: list[schema.Payload] | None = None
    failure: str = ""
    reason: str = ""
    rejection: str = ""
    refusal: tuple[int, int, int] | None = None
    answered: bool = False

    @property
    def ok(self) -> bool:
        return self.answers is not None


@dataclass
class Transport:
    """Moves one round trip's messages between the service and its owners."""

    security: ServiceSecurity
    timeout: float
    poll_interval: float
    faults: FaultInjector | None = None
    traffic: TrafficStats = field(default_factory=TrafficStats)

    def exchange(
        self,
        grid: Grid,
        kind: schema.Kind,
        phase: str,
        parts: list[RecordDict],
        nodes: list[int],
        check: Check | None = None,
    ) -> dict[int, Outcome]:
        """Seal ``parts`` for each node, push all, poll for every reply, open and check them."""
        messages = [
            Message(
                content=self.security.seal(n, kind.message_type, phase, parts),
                dst_node_id=n,
                message_type=kind.message_type,
            )
            for n in nodes
        ]
        replies = self._round_trip(grid, messages, phase)
        return {
            node: self._outcome(node, kind, phase, len(parts), reply, check)
            for node, reply in zip(nodes, replies, strict=True)
        }

    def await_nodes(self, grid: Grid, nodes: list[int], phase: str) -> None:
        """Wait up to ``timeout`` for SuperNodes Flower reported offline to reconnect.

        A SuperNode that is restarted keeps its node id (its authentication key), but while
        it is away the SuperLink answers every message for it with "node unavailable" at
        once: re-sending straight away would spend all retries within a second.
        """
        deadline = time.monotonic() + self.timeout
        log(
            INFO, "%s: waiting up to %.0f s for node(s) %s to come back", phase, self.timeout, nodes
        )
        while time.monotonic() < deadline:
            if set(nodes) <= set(grid.get_node_ids()):
                return
            time.sleep(max(self.poll_interval, 0.5))

    def _round_trip(
        self, grid: Grid, messages: list[Message], phase: str = ""
    ) -> list[Message | str]:
        """Push all messages at once, poll for every reply; one round trip, counted and timed
        (``traffic.timings``: when it was pushed, each reply's seconds after that).

        A message the grid did not queue, or whose reply did not come within ``timeout``,
        comes back as the reason why not.
        """
        self.traffic.round_trips += 1
        self.traffic.messages += len(messages)
        if self.faults is not None:
            messages = [self.faults.outgoing(m) for m in messages]
        for m in messages:
            nbytes, node = codec.payload_nbytes(m.content), m.metadata.dst_node_id
            self.traffic.bytes_sent += nbytes
            self.traffic.sent_by_node[node] = self.traffic.sent_by_node.get(node, 0) + nbytes
        pushed, start = time.time(), time.monotonic()
        ids = list(grid.push_messages(messages))
        if len(ids) != len(messages):
            raise OwnerError(
                f"the grid returned {len(ids)} message ids for {len(messages)} messages"
            )
        pending, replies, took = {i for i in ids if i}, {}, {}
        deadline = time.monotonic() + self.timeout
        while pending:
            for reply in grid.pull_messages(list(pending)):
                replies[reply.metadata.reply_to_message_id] = reply
                pending.discard(reply.metadata.reply_to_message_id)
                took[reply.metadata.reply_to_message_id] = round(time.monotonic() - start, 4)
            if pending:
                if time.monotonic() > deadline:
                    break  # the silent owners fail this round trip; the others go on
                time.sleep(self.poll_interval)
        self.traffic.timings.append(
            {
                "kind": messages[0].metadata.message_type if messages else "",
                "phase": phase,
                "pushed": round(pushed, 4),
                "replies": [
                    {"node": m.metadata.dst_node_id, "message": i, "seconds": took.get(i)}
                    for m, i in zip(messages, ids, strict=True)
                ],
            }
        )
        silent = f"no answer within timeout={self.timeout}s"
        out: list[Message | str] = [
            replies.get(mid, silent) if mid else "the grid did not queue the message" for mid in ids
        ]
        if self.faults is not None:
            out = [r if isinstance(r, str) else self.faults.incoming(r) for r in out]
        return out

    def _count_received(self, node: int, reply: Message) -> None:
        """Bytes of a reply that proved authentic: a relay's junk is not the owner's traffic."""
        nbytes = codec.payload_nbytes(reply.content)
        self.traffic.bytes_received += nbytes
        got = self.traffic.received_by_node
        got[node] = got.get(node, 0) + nbytes

    def _outcome(
        self,
        node: int,
        kind: schema.Kind,
        phase: str,
        expected: int,
        reply: Message | str,
        check: Check | None,
    ) -> Outcome:
        """Classify one reply; only an authentic, on-schema answer to the request carries
        answers. Nothing a relay or an owner sends can raise here: every defect is that
        owner's failure, counted by reason."""
        if isinstance(reply, str):
            return Outcome(failure="timeout", reason=reply, answered=True)
        if reply.has_error():
            code, text = int(reply.error.code), str(reply.error.reason)
            rejection = errors.parse_rejection(code, text)
            if rejection is not None:
                self.reject(node, kind, phase, "owner", rejection, text)
                why = f"the owner rejected our message ({rejection})"
                return Outcome(failure="rejected", reason=why, rejection=rejection)
            # unauthenticated: a forged "budget" or "policy" error is just a failure
            failure = "offline" if code == ErrorCode.NODE_UNAVAILABLE else "error"
            return Outcome(
                failure=failure, reason=f"error reply (code {code}): {_first_line(text)}"
            )
        try:
            refusal, answers = self._open(node, kind, expected, reply, check)
        except (RejectedError, schema.ProtocolError, ReplyError) as exc:
            reason = exc.reason if isinstance(exc, RejectedError) else (
                "invalid-reply" if isinstance(exc, ReplyError) else "malformed"
            )  # fmt: skip
            self.reject(node, kind, phase, "service", reason, str(exc))
            why = f"we rejected its reply ({reason}: {_first_line(str(exc), 200)})"
            return Outcome(failure="rejected", reason=why, rejection=reason, answered=True)
        except Exception as exc:  # a defect we did not foresee is still only this owner's
            self.reject(node, kind, phase, "service", "malformed", repr(exc))
            why = f"we rejected its reply (malformed: {type(exc).__name__})"
            return Outcome(failure="rejected", reason=why, rejection="malformed", answered=True)
        self._count_received(node, reply)
        if refusal is not None:
            if refusal.code == "budget":
                return Outcome(
                    failure="budget", refusal=(refusal.budget, refusal.used, refusal.asked)
                )
            if refusal.code == "error":  # it may have reserved the samples: answered
                why = f"the owner failed: {_first_line(refusal.reason, 200)}"
                return Outcome(failure="error", reason=why, answered=True)
            return Outcome(failure="policy", reason=f"refused by its owner: {refusal.reason}")
        return Outcome(answers=answers, answered=True)

    def _open(
        self, node: int, kind: schema.Kind, expected: int, reply: Message, check: Check | None
    ) -> tuple[errors.Refused | None, list[schema.Payload]]:
        """Authenticate, decrypt, decode and check one reply (raises on any defect)."""
        opened = self.security.open(node, kind.message_type, reply.content)
        refusal = errors.read_refusal(opened)
        if refusal is not None:
            return refusal, []
        if len(opened) != expected:
            raise RejectedError("malformed", f"{len(opened)} answers to {expected} payloads")
        answers = [schema.decode(kind, "reply", rd) for rd in opened]
        if check is not None:
            check(node, answers)
        return None, answers

    def reject(
        self, node: int, kind: schema.Kind, phase: str, side: str, reason: str, why: str
    ) -> None:
        """Count a refused message and log it once."""
        self.traffic.rejected[reason] = self.traffic.rejected.get(reason, 0) + 1
        self.traffic.rejections.append(
            {"node": node, "kind": kind.message_type, "phase": phase, "by": side, "reason": reason}
        )
        log(
            WARNING,
            "%s rejected a %s message (node %d, %s): %s",
            side,
            kind.message_type,
            node,
            phase,
            why,
        )


def _first_line(text: str, limit: int = 500) -> str:
    """An owner's error reason, short enough for a log line (a traceback may follow it)."""
    lines = str(text).strip().splitlines()
    line = lines[0] if lines else "(no reason given)"
    return line if len(line) <= limit else line[: limit - 3] + "..."
