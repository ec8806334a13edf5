"""Data owner = Flower ClientApp: answers queries about generated features only.

Thin on purpose: each message kind goes to its handler in :mod:`azsl_flower.owner.handlers`.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from azsl_flower.owner import handlers

app = ClientApp()


@app.query("setup")
def setup(msg: Message, context: Context) -> Message:
    """Declare feature size and class coverage (weights scenario: also the teacher)."""
    return handlers.setup(msg, context)


@app.query("feedback")
def feedback(msg: Message, context: Context) -> Message:
    """Teacher softmax, losses and the input gradient (black-box: regulariser's only)."""
    return handlers.feedback(msg, context)


@app.query("verify")
def verify(msg: Message, context: Context) -> Message:
    """Label verification (Eq. 3): teacher argmax and softmax for generated features."""
    return handlers.verify(msg, context)


@app.query("dfzsl_probe")
def dfzsl_probe(msg: Message, context: Context) -> Message:
    """Scenario dfzsl: the cosine teacher's logits on the service's probe features."""
    return handlers.dfzsl_probe(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the service's model and the owner's own teacher on the local test split."""
    return handlers.evaluate(msg, context)
