"""Data owner = Flower ClientApp: answers queries about generated features only.

Thin on purpose: each message kind goes to its handler in :mod:`azsl_flower.owner.handlers`.
Flower 1.42 starts a ClientApp process per message: :mod:`azsl_flower.owner.timing` (imported
first) notes when our imports begin and end, and each handler's marks (owner's log only).

With ``owner-worker=<socket>`` in the node config the message is forwarded instead to the
owner's worker (``azsl-flower owner serve``), which calls the same handler with torch and the
teacher already in memory; that path never imports torch (the handlers are imported only on
the in-process path, at its first message).
"""

from __future__ import annotations

import sys

from azsl_flower.owner import timing

timing.mark("app")

from flwr.app import Context, Message  # noqa: E402  (after the first timing mark)
from flwr.clientapp import ClientApp  # noqa: E402

from azsl_flower.owner.forward import forward, worker_socket  # noqa: E402  (torch-free)

timing.mark("imports")

app = ClientApp()
_HANDLERS = "azsl_flower.owner.handlers"


def _answer(kind: str, msg: Message, context: Context) -> Message:
    """The owner's worker's answer (node-config ``owner-worker``), else the handler's here."""
    path = worker_socket(context.node_config)
    if path:
        return timing.timed(lambda m, c: forward(path, m, c), msg, context)
    first = _HANDLERS not in sys.modules
    from azsl_flower.owner import handlers  # torch: only on the in-process path

    if first:  # this process's imports end here (a ClientApp process per message)
        timing.mark("imports")
    return timing.timed(getattr(handlers, kind), msg, context)


@app.query("setup")
def setup(msg: Message, context: Context) -> Message:
    """Declare feature size and class coverage (weights scenario: also the teacher)."""
    return _answer("setup", msg, context)


@app.query("feedback")
def feedback(msg: Message, context: Context) -> Message:
    """Teacher softmax, losses and the input gradient (black-box: regulariser's only)."""
    return _answer("feedback", msg, context)


@app.query("verify")
def verify(msg: Message, context: Context) -> Message:
    """Label verification (Eq. 3): teacher argmax and softmax for generated features."""
    return _answer("verify", msg, context)


@app.query("dfzsl_probe")
def dfzsl_probe(msg: Message, context: Context) -> Message:
    """Scenario dfzsl: the cosine teacher's logits on the service's probe features."""
    return _answer("dfzsl_probe", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the service's model and the owner's own teacher on the local test split."""
    return _answer("evaluate", msg, context)
