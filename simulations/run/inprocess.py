"""A Flower Grid that delivers messages to ClientApps in this process.

Real `Message` objects go through the real `ClientApp`, one call per message, without
starting Ray or a SuperLink: tests inspect exactly what crosses the wire with it, and
benchmarks time the AZSL loop without Ray's process and scheduling overheads. The
`flwr run` test covers the real runtime.
"""

from __future__ import annotations

import secrets
import time
import traceback
import uuid
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid"]


class InProcessGrid(Grid):
    """``num_nodes`` simulated owners (node ids 1000, 1001, ...) served by ``client_app``.

    Each node has its own `Context` with ``partition-id``/``num-partitions`` in its node
    config and ``run_config`` as its run config, as Flower's simulation gives them. The
    run id is random unless given, as Flower's are: per-run simulation keys live under
    ``keys/run-<id>/``, so two runs in parallel (a sweep split over processes) must not
    share one. Pass ``grid.run_id`` to ``run_azsl``. ``node_config``: more node-config
    keys for every owner (an owner's own policy: response modes, differential privacy).
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict | None = None,
        run_id: int | None = None,
        node_config: dict | None = None,
    ) -> None:
        self.app = client_app
        self.run_id = run_id if run_id is not None else secrets.randbelow(2**63 - 1) + 1
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self.run_id, 1, 1
        self.contexts = {
            1000 + i: Context(
                run_id=self.run_id,
                node_id=1000 + i,
                node_config={
                    "partition-id": i,
                    "num-partitions": num_nodes,
                    **(node_config or {}),
                },
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i in range(num_nodes)
        }
        self.pending: dict[str, Message] = {}
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        # per push (one round trip of the strategy): seconds each node spent answering
        self.owner_seconds: list[dict[int, float]] = []

    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's signature
        pass

    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        spent: dict[int, float] = {}
        self.owner_seconds.append(spent)
        for msg in messages:
            mid = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            msg.metadata.__dict__["_src_node_id"] = 1
            self.sent.append(msg)
            t = time.perf_counter()
            reply = self.deliver(msg)
            node = msg.metadata.dst_node_id
            spent[node] = spent.get(node, 0.0) + time.perf_counter() - t
            if reply is not None:  # None: the node never answers (a dead or lost SuperNode)
                self.replies.append(reply)
                self.pending[mid] = reply
            ids.append(mid)
        return ids

    def deliver(self, msg: Message) -> Message | None:
        """Run the ClientApp on one message; subclasses simulate owners that fail or vanish."""
        try:
            return self.app(msg, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # what a SuperNode turns into an error reply
            return Message(Error(code=2, reason=f"{exc!r}\n{traceback.format_exc()}"), reply_to=msg)

    def owner_time(self) -> dict[str, float]:
        """Owners' answering time: ``total`` (what this process spent, owners one after
        another) and ``critical`` (per round trip the slowest owner only, summed: what it
        would take were every owner on its own machine, all at once)."""
        return {
            "total": sum(sum(s.values()) for s in self.owner_seconds),
            "critical": sum(max(s.values(), default=0.0) for s in self.owner_seconds),
        }

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.pending.pop(i) for i in list(message_ids) if i in self.pending]

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        return self.pull_messages(self.push_messages(messages))
