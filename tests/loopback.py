"""Test grids: the in-process grid (simulations.inprocess) and owners that fail on cue.

Real `Message` objects go through the real `ClientApp`, so tests can inspect exactly what
crosses the wire, without starting Ray. The `flwr run` test covers the real runtime.
"""

from __future__ import annotations

from flwr.app import Error, Message
from flwr.clientapp import ClientApp

from simulations.inprocess import InProcessGrid, LoopbackGrid

__all__ = ["FlakyGrid", "InProcessGrid", "LoopbackGrid"]


class FlakyGrid(LoopbackGrid):
    """Owners that stop working mid-run: ``failing[node] = (after, mode)`` lets the node
    answer its first ``after`` messages, then answer with an error ('error', as a SuperNode
    whose ClientApp raised) or never again ('silent', as a SuperNode that went away)."""

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

    def deliver(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        self.delivered[node] = self.delivered.get(node, 0) + 1
        after, mode = self.failing.get(node, (None, ""))
        if after is not None and self.delivered[node] > after:
            if mode == "silent":
                return None
            return Message(Error(code=2, reason=self.CRASH), reply_to=msg)
        return super().deliver(msg)
