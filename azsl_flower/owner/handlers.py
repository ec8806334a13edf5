"""The owner's answers to each message kind: open, check, answer, seal.

Each handler gets a sealed request and the node's Flower ``Context`` and returns the sealed
reply (or a reason-bearing error). Replies carry only quantities computed on *generated*
features, or per-class counts; never a real feature row, a label of a real sample, or
teacher weights (except in the ``weights`` scenario).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.app import Context, Error, Message
from flwr.common.logger import log

from azsl_flower.common.config import Scenario
from azsl_flower.common.models import resolve_device
from azsl_flower.owner import budget
from azsl_flower.owner.answers import feedback_answer, verify_answer
from azsl_flower.owner.evaluation import evaluate_model, model_from_weights
from azsl_flower.owner.privacy import ModeRefusedError, OwnerPrivacy, owner_privacy
from azsl_flower.owner.state import OwnerState, owner_state, teacher_weights
from azsl_flower.wire import errors, schema
from azsl_flower.wire.channels import OwnerSecurity
from azsl_flower.wire.crypto import RejectedError

__all__ = ["MAX_CALIBRATION_VALUES", "evaluate", "feedback", "setup", "verify"]

Answer = dict[str, object]  # keyword arguments of schema.encode for one reply
MAX_CALIBRATION_VALUES = 256  # values one evaluation may score (each is an argmax per sample)


def _serve(
    msg: Message,
    context: Context,
    kind: schema.Kind,
    handle: Callable[[schema.Payload, Context], Answer],
) -> Message:
    """Open the sealed request, answer each payload in it, seal the answers together."""
    try:
        security = OwnerSecurity(context)
        request, parts = security.open(msg, kind.message_type)
    except RejectedError as exc:
        # Refused before any use; the reply says why but carries nothing else.
        log(WARNING, "owner %s rejected a %s message: %s", context.node_id, kind.message_type, exc)
        return Message(
            Error(code=errors.REJECTED_CODE, reason=errors.rejection(exc.reason, exc.detail)),
            reply_to=msg,
        )
    payloads = [schema.decode(kind, "request", rd) for rd in parts]
    metered = kind is schema.FEEDBACK or kind is schema.VERIFY  # queries about generated samples
    asked = sum(int(p.arrays["y"].size) for p in payloads) if metered else 0
    limit, used = budget.query_budget(context), budget.queries_used(context)
    if asked and limit and used + asked > limit:
        # Refused before any work; a distinct error the service treats as "skip me this time".
        log(
            WARNING,
            "owner %s refused a %s request of %d samples: query-budget %d, %d used",
            context.node_id,
            kind.message_type,
            asked,
            limit,
            used,
        )
        reason = errors.budget_refusal(limit, used, asked)
        return Message(Error(code=errors.BUDGET_CODE, reason=reason), reply_to=msg)
    try:
        answers = [schema.encode(kind, "reply", **handle(p, context)) for p in payloads]  # type: ignore[arg-type]
    except ModeRefusedError as exc:
        # The node config does not allow the mode asked: refused before any answer.
        log(WARNING, "owner %s refused a %s request: %s", context.node_id, kind.message_type, exc)
        return Message(Error(code=errors.MODE_REFUSED_CODE, reason=str(exc)), reply_to=msg)
    if asked:
        budget.record_used(context, used + asked)
    return Message(security.seal(kind.message_type, request, answers), reply_to=msg)


def _policy(payload: schema.Payload, context: Context) -> OwnerPrivacy:
    """This owner's privacy policy (node config); refuses modes it does not allow."""
    policy = owner_privacy(context.node_config)
    policy.check(dict(payload.settings or {}))
    return policy


def _state(payload: schema.Payload, context: Context) -> OwnerState:
    policy = _policy(payload, context)
    settings = dict(payload.settings or {})
    node = context.node_config
    # A deployed owner names its own data and cache in its node config; they win.
    for key in ("data-dir", "feature-file", "cache-dir", "device"):
        if key in node:
            settings[key] = node[key]
    if "data-dir" in node and settings.get("dataset") == "digits":
        settings["dataset"] = "xlsa17"
    if "partition-id" not in node:
        # Partitions simulate owners out of one dataset; a deployed owner holds its own data.
        settings["partition"], settings["owner-classes"] = "iid", ""
    pid, nparts = int(node.get("partition-id", 0)), int(node.get("num-partitions", 1))
    return owner_state(settings, pid, nparts, policy)


def _setup(payload: schema.Payload, context: Context) -> Answer:
    st = _state(payload, context)
    arrays = {
        "covered": st.data.covered_classes.astype(np.int64),
        "seen": st.data.seen_classes.astype(np.int64),
        "unseen": st.data.unseen_classes.astype(np.int64),
    }
    weights = None
    settings = dict(payload.settings or {})
    if settings.get("scenario") == Scenario.WEIGHTS:
        weights = teacher_weights(st)
        reg = st.oracle.regulariser
        if hasattr(reg, "stats") and settings.get("regulariser-answer", "gradient") != "none":
            s = reg.stats()
            arrays |= {"reg_mean": s["mean"], "reg_var": s["var"], "reg_classes": s["classes"]}
    spend = st.spend(settings)
    privacy = {
        "teacher_answer": str(st.privacy.teacher_answer),
        "regulariser_answer": st.privacy.regulariser_answer,
        "allow_whitebox": st.privacy.allow_whitebox,
        "answer_decimals": st.privacy.answer_decimals,
        **spend.to_json(),
    }
    scalars = {
        "dim": st.data.dim,
        "num_classes": st.data.num_classes,
        # fault injection is for simulations; a deployed owner has no partition-id
        "simulated": "partition-id" in context.node_config,
        "query_budget": budget.query_budget(context),
        "epsilon": -1.0 if spend.epsilon is None else spend.epsilon,
        "delta": spend.delta,
        "privacy": json.dumps(privacy),
    }
    return {"arrays": arrays, "scalars": scalars, "weights": weights}


def _feedback(payload: schema.Payload, context: Context) -> Answer:
    st = _state(payload, context)
    x, y = payload.arrays["x"], payload.arrays["y"]
    _check_query(x, y, st)
    out = feedback_answer(
        st.oracle,
        x,
        y,
        int(payload.scalars["batch_size"]),
        dict(payload.settings or {}),
        st.privacy,
        lse_grad=bool(payload.scalars["lse_grad"]),
    )
    return {"arrays": out}


def _verify(payload: schema.Payload, context: Context) -> Answer:
    st = _state(payload, context)
    x, y = payload.arrays["x"], payload.arrays["y"]
    _check_query(x, y, st)
    return {"arrays": verify_answer(st.oracle, x, dict(payload.settings or {}), st.privacy)}


def _evaluate(payload: schema.Payload, context: Context) -> Answer:
    st = _state(payload, context)
    device = resolve_device(str((payload.settings or {}).get("device", "auto")))
    model = model_from_weights(payload.weights or {}, device)
    unseen = payload.arrays["unseen"]
    gammas = payload.arrays.get("calibration")
    if gammas is not None and (
        gammas.size > MAX_CALIBRATION_VALUES or not np.all(np.isfinite(gammas) & (gammas >= 0))
    ):
        raise ValueError(
            f"calibration: up to {MAX_CALIBRATION_VALUES} finite values >= 0 to score, got "
            f"{gammas.size} (min {np.min(gammas) if gammas.size else None})"
        )
    scored = evaluate_model(model, st.data, unseen, device, calibration=gammas)
    out = {f"model_{k}": v for k, v in scored.items()}
    teacher = evaluate_model(None, st.data, unseen, device, oracle=st.oracle)
    out |= {f"teacher_{k}": v for k, v in teacher.items()}
    return {"arrays": {k: v.astype(np.int64) for k, v in out.items()}}


def setup(msg: Message, context: Context) -> Message:
    """Declare feature size and class coverage (weights scenario: also the teacher)."""
    return _serve(msg, context, schema.SETUP, _setup)


def feedback(msg: Message, context: Context) -> Message:
    """Teacher softmax, losses and the input gradient (black-box: regulariser's only)."""
    return _serve(msg, context, schema.FEEDBACK, _feedback)


def verify(msg: Message, context: Context) -> Message:
    """Label verification (Eq. 3): teacher argmax and softmax for generated features."""
    return _serve(msg, context, schema.VERIFY, _verify)


def evaluate(msg: Message, context: Context) -> Message:
    """Score the service's model and the owner's own teacher on the local test split."""
    return _serve(msg, context, schema.EVALUATE, _evaluate)


def _check_query(x: np.ndarray, y: np.ndarray, st: OwnerState) -> None:
    data = st.data
    if x.shape[1] != data.dim or x.shape[0] != y.size:
        raise ValueError(
            f"query features are {x.shape} for {y.size} labels; this owner's features are "
            f"{data.dim}-d: the generator's output size must match the owners' features"
        )
    if y.size and (y.min() < 0 or y.max() >= data.num_classes):
        raise ValueError(f"query labels outside 0..{data.num_classes - 1}")
