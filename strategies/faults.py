"""Fault injection for simulations: play a hostile relay between service and owners.

With ``fault-tamper`` / ``fault-replay`` > 0 the service's transport flips bytes in, or
substitutes an earlier message for, that fraction of sealed messages in both directions,
after sealing and before opening, exactly where the SuperLink sits. Every injected fault
must come back as a rejection (``results.json``: ``faults_injected`` vs
``rejected_messages``); the run must still finish. Enabled only when every owner reports
that it runs in a simulation.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message, RecordDict

from azsl_flower.wire import codec

__all__ = ["FaultInjector"]


class FaultInjector:
    def __init__(self, tamper: float, replay: float, seed: int) -> None:
        self.tamper, self.replay = tamper, replay
        self.rng = np.random.default_rng(seed + 7919)
        self.injected = {"tamper": 0, "replay": 0}
        self.enabled = False
        self._last: dict[tuple[str, int], RecordDict] = {}  # (direction, node) -> content

    def outgoing(self, msg: Message) -> Message:
        return self._maybe(msg, "out", msg.metadata.dst_node_id)

    def incoming(self, msg: Message) -> Message:
        if msg.has_error():
            return msg
        return self._maybe(msg, "in", msg.metadata.src_node_id)

    def _maybe(self, msg: Message, direction: str, node: int) -> Message:
        original = msg.content
        key = (direction, node)
        r = self.rng.random()
        if self.enabled and r < self.tamper:
            msg.content = self._flip(original)
            self.injected["tamper"] += 1
        elif self.enabled and r < self.tamper + self.replay and key in self._last:
            msg.content = self._last[key]
            self.injected["replay"] += 1
        self._last[key] = original
        return msg

    def _flip(self, content: RecordDict) -> RecordDict:
        """Flip one random byte in the header or the body of every sealed part."""
        out = []
        for header, body in codec.open_envelope(content):
            pair = [bytearray(header), bytearray(body)]
            which = pair[0] if self.rng.random() < 0.3 else pair[1]
            which[int(self.rng.integers(len(which)))] ^= int(self.rng.integers(1, 256))
            out.append((bytes(pair[0]), bytes(pair[1])))
        return codec.envelope(out)
