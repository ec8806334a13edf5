"""Data owner = Flower ClientApp: answers queries about generated features only."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from azsl_flower import protocol as P
from azsl_flower.models import resolve_device
from azsl_flower.owner import evaluate_model, model_from_weights, owner_state, teacher_weights

app = ClientApp()


def _state(msg: Message, context: Context, kind: P.Kind) -> tuple[P.Payload, object]:
    payload = P.decode(kind, "request", msg.content)
    settings = dict(payload.settings or {})
    node = context.node_config
    # A deployed owner names its own data and cache in its node config; they win.
    for key in ("data-dir", "feature-file", "cache-dir", "device"):
        if key in node:
            settings[key] = node[key]
    if "data-dir" in node and settings.get("dataset") == "digits":
        settings["dataset"] = "xlsa17"
    pid, nparts = int(node.get("partition-id", 0)), int(node.get("num-partitions", 1))
    return payload, owner_state(settings, pid, nparts)


@app.query("setup")
def setup(msg: Message, context: Context) -> Message:
    """Declare feature size and class coverage (weights scenario: also the teacher)."""
    payload, st = _state(msg, context, P.SETUP)
    arrays = {
        "covered": st.data.covered_classes.astype(np.int64),
        "seen": st.data.seen_classes.astype(np.int64),
        "unseen": st.data.unseen_classes.astype(np.int64),
    }
    weights = None
    if payload.settings and payload.settings.get("scenario") == "weights":
        weights = teacher_weights(st)
        reg = st.oracle.regulariser
        if hasattr(reg, "stats"):
            s = reg.stats()
            arrays |= {"reg_mean": s["mean"], "reg_var": s["var"], "reg_classes": s["classes"]}
    scalars = {
        "dim": st.data.dim,
        "num_classes": st.data.num_classes,
        "train_size": int(st.data.train_y.size),
        "teacher_train_acc": st.teacher_train_accuracy,
    }
    return Message(P.encode(P.SETUP, "reply", arrays, scalars, weights), reply_to=msg)


@app.query("feedback")
def feedback(msg: Message, context: Context) -> Message:
    """Teacher softmax, losses and the input gradient (black-box: regulariser's only)."""
    payload, st = _state(msg, context, P.FEEDBACK)
    x, y = payload.arrays["x"], payload.arrays["y"]
    _check_query(x, y, st)
    s = payload.settings or {}
    whitebox = s.get("scenario") in ("whitebox", "weights")
    out = st.oracle.feedback(x, y, int(payload.scalars["batch_size"]), whitebox, float(s["alpha"]))
    return Message(P.encode(P.FEEDBACK, "reply", out), reply_to=msg)


@app.query("verify")
def verify(msg: Message, context: Context) -> Message:
    """Label verification (Eq. 3): teacher argmax and softmax for generated features."""
    payload, st = _state(msg, context, P.VERIFY)
    x, y = payload.arrays["x"], payload.arrays["y"]
    _check_query(x, y, st)
    probs = st.oracle.probs(x).astype(np.float32)
    out = {"pred": probs.argmax(1).astype(np.int64), "probs": probs}
    return Message(P.encode(P.VERIFY, "reply", out), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the service's model and the owner's own teacher on the local test split."""
    payload, st = _state(msg, context, P.EVALUATE)
    device = resolve_device(str((payload.settings or {}).get("device", "auto")))
    model = model_from_weights(payload.weights or {}, device)
    unseen = payload.arrays["unseen"]
    out = {f"model_{k}": v for k, v in evaluate_model(model, st.data, unseen, device).items()}
    teacher = evaluate_model(None, st.data, unseen, device, oracle=st.oracle)
    out |= {f"teacher_{k}": v for k, v in teacher.items()}
    return Message(
        P.encode(P.EVALUATE, "reply", {k: v.astype(np.int64) for k, v in out.items()}), reply_to=msg
    )


def _check_query(x: np.ndarray, y: np.ndarray, st: object) -> None:
    data = st.data  # type: ignore[attr-defined]
    if x.shape[1] != data.dim or x.shape[0] != y.size:
        raise ValueError(
            f"query features are {x.shape} for {y.size} labels; this owner's features are "
            f"{data.dim}-d: the generator's output size must match the owners' features"
        )
    if y.size and (y.min() < 0 or y.max() >= data.num_classes):
        raise ValueError(f"query labels outside 0..{data.num_classes - 1}")
