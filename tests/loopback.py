"""Test grids: the in-process grid (simulations.inprocess) and owners that fail on cue.

Real `Message` objects go through the real `ClientApp`, so tests can inspect exactly what
crosses the wire, without starting Ray. The `flwr run` test covers the real runtime.
"""

from __future__ import annotations

import time

from flwr.app import Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from simulations.inprocess import InProcessGrid

__all__ = ["FlakyGrid", "InProcessGrid", "InProcessGrid"]


class FlakyGrid(InProcessGrid):
    """Owners that stop working mid-run: ``failing[node] = (after, mode)`` lets the node
    answer its first ``after`` messages, then answer with an error ('error', as a SuperNode
    whose ClientApp raised), never again ('silent', as a SuperNode that went away), or be
    away for ``offline_for`` seconds ('offline', as a restarting SuperNode: the SuperLink
    answers "node unavailable" and lists it again once it is back)."""

    CRASH = "<class 'OSError'>:<'owner crashed: disk full'>"  # real Flower's reason format

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict | None = None,
        failing: dict[int, tuple[int, str]] | None = None,
    ) -> None:
        super().__init__(client_app, num_nodes, run_config)
        self.failing = dict(failing or {})
        self.delivered: dict[int, int] = {}
        self.offline_for = 1.0  # 'offline': seconds a restarting SuperNode is away
        self.back_at: dict[int, float] = {}

    def get_node_ids(self) -> list[int]:
        now = time.monotonic()
        return [n for n in self.contexts if self.back_at.get(n, 0.0) <= now]

    def deliver(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        self.delivered[node] = self.delivered.get(node, 0) + 1
        after, mode = self.failing.get(node, (None, ""))
        if mode == "offline" and self.delivered[node] == after + 1:
            self.back_at[node] = time.monotonic() + self.offline_for  # it restarts now
        if self.back_at.get(node, 0.0) > time.monotonic():  # what the SuperLink answers
            return Message(
                Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node unavailable"), reply_to=msg
            )
        if mode != "offline" and after is not None and self.delivered[node] > after:
            if mode == "silent":
                return None
            return Message(Error(code=2, reason=self.CRASH), reply_to=msg)
        return super().deliver(msg)
