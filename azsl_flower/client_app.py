"""Data owner = Flower ClientApp: answers queries about generated features only.

Thin on purpose: each message kind goes to its handler in :mod:`azsl_flower.owner.handlers`.
Flower 1.42 starts a ClientApp process per message: :mod:`azsl_flower.owner.timing` (imported
first) notes when our imports begin and end, and each handler's marks (owner's log only).
"""

from __future__ import annotations

from azsl_flower.owner import timing

timing.mark("app")

from flwr.app import Context, Message  # noqa: E402  (after the first timing mark)
from flwr.clientapp import ClientApp  # noqa: E402

from azsl_flower.owner import handlers  # noqa: E402

timing.mark("imports")

app = ClientApp()


@app.query("setup")
def setup(msg: Message, context: Context) -> Message:
    """Declare feature size and class coverage (weights scenario: also the teacher)."""
    return timing.timed(handlers.setup, msg, context)


@app.query("feedback")
def feedback(msg: Message, context: Context) -> Message:
    """Teacher softmax, losses and the input gradient (black-box: regulariser's only)."""
    return timing.timed(handlers.feedback, msg, context)


@app.query("verify")
def verify(msg: Message, context: Context) -> Message:
    """Label verification (Eq. 3): teacher argmax and softmax for generated features."""
    return timing.timed(handlers.verify, msg, context)


@app.query("dfzsl_probe")
def dfzsl_probe(msg: Message, context: Context) -> Message:
    """Scenario dfzsl: the cosine teacher's logits on the service's probe features."""
    return timing.timed(handlers.dfzsl_probe, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the service's model and the owner's own teacher on the local test split."""
    return timing.timed(handlers.evaluate, msg, context)
