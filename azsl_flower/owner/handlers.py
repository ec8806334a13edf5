"""The owner's answers to each message kind: open, check, answer, seal.

Each handler gets a sealed request and the node's Flower ``Context`` and returns the sealed
reply, a sealed refusal, or (when the request cannot even be opened) a reason-bearing
error. What the owner agrees to is its policy (:mod:`azsl_flower.owner.policy`, node config
only); what a run may cost is reserved in its run state before any work
(:mod:`azsl_flower.owner.budget`). Replies carry only quantities computed on *generated*
features, or per-class counts; never a real feature row, a label of a real sample, or
teacher weights (except in the ``weights`` scenario, by the owner's opt-in).

Work is bounded per message kind: only a set-up may train a teacher (within
``max-setups`` per run, the cache pruned to ``max-teachers`` after it), and the run
state records the teachers its set-ups made; feedback, verification, dfzsl probes and
evaluation answer only from one of those (a sealed refusal otherwise). Any exception
after the request is opened is answered by a sealed ``error`` refusal that names the
exception's class only: its text (paths, values) stays in the owner's log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import ERROR, WARNING

import numpy as np
from flwr.app import Context, Error, Message
from flwr.common.logger import log

from azsl_flower.common.config import Scenario
from azsl_flower.common.models import classifier, resolve_device
from azsl_flower.common.modes import sends_statistics
from azsl_flower.owner import budget, timing
from azsl_flower.owner.answers import feedback_answer, rounded, verify_answer
from azsl_flower.owner.dfzsl import probe_logits
from azsl_flower.owner.evaluation import (
    class_counts,
    evaluate_model,
    leave_out_small_classes,
    model_from_weights,
)
from azsl_flower.owner.lifetime import declaration
from azsl_flower.owner.policy import MAX_CALIBRATION_PER_REQUEST, OwnerPolicy
from azsl_flower.owner.session import Session, open_session
from azsl_flower.owner.state import (
    OwnerState,
    check_settings,
    no_teacher,
    owner_state,
    teacher_weights,
)
from azsl_flower.owner.teacher_files import mark_used, prune_teachers
from azsl_flower.wire import errors, schema
from azsl_flower.wire.crypto import RejectedError
from azsl_flower.wire.errors import Refused

__all__ = ["MAX_CALIBRATION_VALUES", "dfzsl_probe", "evaluate", "feedback", "setup", "verify"]

Answer = dict[str, object]  # keyword arguments of schema.encode for one reply
MAX_CALIBRATION_VALUES = MAX_CALIBRATION_PER_REQUEST  # values one evaluation may score
TEACHERS = "teachers"  # section of the run state: the state keys this run's set-ups made


@dataclass
class Job:
    """One payload of a request, with the settings the owner's policy allows for it."""

    payload: schema.Payload
    settings: dict[str, object]
    policy: OwnerPolicy
    train: bool = False  # only a set-up may train a teacher (or make a DP release)
    _state: OwnerState | None = field(default=None, repr=False)
    lifetime: dict[str, int] = field(default_factory=dict)  # owner's use over all runs

    @property
    def state(self) -> OwnerState:
        """This owner's data and teacher (trained once at set-up, then cached)."""
        if self._state is None:
            self._state = owner_state(
                self.settings, *self.policy.partition, self.policy.privacy, train=self.train
            )
        return self._state


def _serve(
    msg: Message,
    context: Context,
    kind: schema.Kind,
    handle: Callable[[Job], Answer],
) -> Message:
    """Open the sealed request, check it against the policy, reserve what it costs, answer
    each payload in it and seal the answers together; all under this run's lock."""
    with open_session(context) as session:
        timing.mark("session")  # policy, keys, run state locked and read
        try:
            request, parts = session.security.open(msg, kind.message_type)
            timing.mark("opened")
        except RejectedError as exc:
            # Refused before any use; the reply says why but carries nothing else.
            log(
                WARNING,
                "owner %s rejected a %s message: %s",
                context.node_id,
                kind.message_type,
                exc,
            )
            return Message(
                Error(code=errors.REJECTED_CODE, reason=errors.rejection(exc.reason, exc.detail)),
                reply_to=msg,
            )
        try:
            answers = _answer(session, kind, parts, handle)
        except Refused as exc:
            log(
                WARNING,
                "owner %s refused a %s request (%s): %s",
                context.node_id,
                kind.message_type,
                exc.code,
                exc.reason,
            )
            answers = [errors.refusal_record(exc)]
        except Exception as exc:  # any defect: sealed, named by its class only
            log(
                ERROR,
                "owner %s failed on a %s request (answered with a sealed error refusal)",
                context.node_id,
                kind.message_type,
                exc_info=exc,
            )
            answers = [errors.refusal_record(errors.internal_error(exc))]
        timing.mark("answered")
        reply = Message(session.security.seal(kind.message_type, request, answers), reply_to=msg)
        timing.mark("sealed")
        return reply


def _answer(
    session: Session, kind: schema.Kind, parts: list, handle: Callable[[Job], Answer]
) -> list:
    try:
        payloads = [schema.decode(kind, "request", rd) for rd in parts]
    except schema.ProtocolError as exc:
        raise Refused("policy", f"malformed request: {exc}") from None
    identity, setup = session.where.identity, kind is schema.SETUP
    jobs = [
        Job(p, session.policy.settings(p.settings, identity), session.policy, train=setup)
        for p in payloads
    ]
    for job in jobs:  # settings no state can be built from: refused before any work
        check_settings(job.settings, session.policy.privacy)
    made: list[str] = list(session.ledger.get(TEACHERS) or [])
    if not setup:
        for job in jobs:  # load (never train) the teacher one of this run's set-ups made
            if job.state.key not in made:
                raise _other_settings() if made else no_teacher()
            mark_used(job.state)
    lifetime = budget.reserve(session.ledger, session.policy, kind, payloads)
    for job in jobs:
        job.lifetime = lifetime
    timing.mark("state")  # teachers loaded (a set-up trains in its answer), budget reserved
    answers = [schema.encode(kind, "reply", **handle(job)) for job in jobs]  # type: ignore[arg-type]
    if setup:  # bind the run to the teachers its set-ups made (one entry per setting)
        keys = dict.fromkeys([*made, *(job.state.key for job in jobs)])
        if list(keys) != made:
            session.ledger.put(TEACHERS, list(keys))
    return answers


def _other_settings() -> Refused:
    """A message whose teacher settings no set-up of this run used: switching teachers
    mid-run (or reading one a set-up of another run made) is refused."""
    return Refused(
        "policy",
        "this run's set-ups used other teacher settings (dataset, teacher, teacher-epochs, "
        "lr-teacher, seed, partition, split, regulariser or scenario dfzsl differ): send a "
        "set-up with these settings first",
    )


def _state(payload: schema.Payload, context: Context) -> OwnerState:
    """This owner's state for a payload, as its policy resolves the settings (tests): as a
    set-up builds it (trained when the cache has none)."""
    policy = OwnerPolicy.from_node_config(context.node_config)
    settings = policy.settings(payload.settings, f"node-{context.node_id}")
    return owner_state(settings, *policy.partition, policy.privacy)


def _setup(job: Job) -> Answer:
    st, policy = job.state, job.policy
    prune_teachers(st, policy.limit("max-teachers"))
    data, keep = st.data, policy.limit("min-class-count")
    arrays = {
        "covered": data.covered_classes.astype(np.int64),
        "seen": data.seen_classes.astype(np.int64),
        "unseen": data.unseen_classes.astype(np.int64),
        "test_seen_counts": class_counts(data.test_seen_y, data.num_classes, keep),
        "test_unseen_counts": class_counts(data.test_unseen_y, data.num_classes, keep),
    }
    weights = None
    scenario = str(job.settings.get("scenario"))
    if scenario == Scenario.WEIGHTS:  # allowed: the policy checked it
        weights = teacher_weights(st)
    reg, answer = st.oracle.regulariser, str(job.settings.get("regulariser-answer", "gradient"))
    sent = reg.has_statistics and sends_statistics(answer, scenario)  # the policy allowed it
    if sent:  # the state's regulariser: its stats-epsilon release (made once, cached) or exact
        arrays |= {f"reg_{name}": value for name, value in reg.stats().items()}
    if job.settings.get("scenario") == Scenario.DFZSL:
        temperature = float(policy["dfzsl-temperature"])
        arrays["cosine_temperature"] = np.asarray([temperature], dtype=np.float32)
        if policy["dfzsl-release-head"]:  # the owner's choice; by default the service probes
            head = st.oracle.teacher.directions()  # type: ignore[operator]
            arrays["cosine_head"] = head.cpu().numpy().astype(np.float32)
    spend = st.spend(job.settings)
    privacy = {
        "teacher_answer": str(st.privacy.teacher_answer),
        "regulariser_answer": st.privacy.regulariser_answer,
        "answer_decimals": st.privacy.answer_decimals,
        **spend.to_json(),
        **declaration(job.lifetime, policy),
    }
    if sent:  # what this reply itself carries of the regulariser (statistics / weights)
        privacy["statistics_sent"] = _statistics_sent(st)
    scalars = {
        "dim": data.dim,
        "num_classes": data.num_classes,
        # fault injection is for simulations; a deployed owner has no partition-id
        "simulated": policy.simulated,
        "query_budget": policy.limit("query-budget"),
        "epsilon": -1.0 if spend.epsilon is None else spend.epsilon,
        "delta": spend.delta,
        "privacy": json.dumps(privacy),
    }
    return {"arrays": arrays, "scalars": scalars, "weights": weights}


def _statistics_sent(st: OwnerState) -> str:
    """How the regulariser's statistics in a set-up reply were made (its declaration)."""
    name = st.oracle.regulariser.name
    if "stats" in st.mechanisms:
        return f"{name} class statistics, DP release (stats-epsilon={st.privacy.stats_epsilon:g})"
    return f"{name} class statistics, exact"


def _feedback(job: Job) -> Answer:
    st, p, s = job.state, job.payload, job.settings
    x, y = p.arrays["x"], p.arrays["y"]
    _check_query(x, y, st)
    batch = int(p.scalars["batch_size"])  # type: ignore[call-overload]
    if batch < 1:
        raise Refused("policy", f"batch_size={batch}: must be >= 1")
    out = feedback_answer(
        st.oracle, x, y, batch, s, st.privacy, lse_grad=bool(p.scalars["lse_grad"])
    )
    return {"arrays": out}


def _verify(job: Job) -> Answer:
    st = job.state
    x, y = job.payload.arrays["x"], job.payload.arrays["y"]
    _check_query(x, y, st)
    return {"arrays": verify_answer(st.oracle, x, job.settings, st.privacy)}


def _dfzsl_probe(job: Job) -> Answer:
    """Scenario dfzsl: the cosine teacher's logits on the service's probe features."""
    if job.settings.get("scenario") != Scenario.DFZSL:  # before any work
        raise Refused("policy", "a dfzsl probe outside scenario=dfzsl: answered only there")
    st = job.state
    x = job.payload.arrays["x"]
    if x.ndim != 2 or x.shape[1] != st.data.dim:
        raise Refused(
            "policy", f"probe features are {x.shape}; this owner's features are {st.data.dim}-d"
        )
    logits = probe_logits(st.oracle.teacher, x, st.oracle.device)
    return {"arrays": rounded({"logits": logits}, st.privacy.answer_decimals)}


def _evaluate(job: Job) -> Answer:
    st, p = job.state, job.payload
    data = st.data
    _check_model(p.weights or {}, data.dim, data.num_classes)
    unseen = p.arrays["unseen"]
    if not np.array_equal(np.sort(unseen), data.unseen_classes):
        raise Refused(
            "policy",
            f"evaluation asks for unseen classes {unseen.tolist()[:20]}; this owner's unseen "
            f"classes are {data.unseen_classes.tolist()[:20]}",
        )
    gammas = p.arrays.get("calibration")
    if gammas is not None and (
        gammas.size > MAX_CALIBRATION_VALUES or not np.all(np.isfinite(gammas) & (gammas >= 0))
    ):
        raise Refused(
            "policy",
            f"calibration: up to {MAX_CALIBRATION_VALUES} finite values >= 0 to score, got "
            f"{gammas.size} (min {np.min(gammas) if gammas.size else None})",
        )
    device = resolve_device(str(job.settings.get("device", "auto")))
    model = model_from_weights(p.weights or {}, device)
    scored = evaluate_model(model, data, unseen, device, calibration=gammas)
    teacher = evaluate_model(None, data, unseen, device, oracle=st.oracle)
    keep = job.policy.limit("min-class-count")
    out = {f"model_{k}": v for k, v in leave_out_small_classes(scored, keep).items()}
    out |= {f"teacher_{k}": v for k, v in leave_out_small_classes(teacher, keep).items()}
    return {"arrays": {k: v.astype(np.int64) for k, v in out.items()}}


def setup(msg: Message, context: Context) -> Message:
    """Declare feature size, class coverage and test counts (weights: also the teacher)."""
    return _serve(msg, context, schema.SETUP, _setup)


def feedback(msg: Message, context: Context) -> Message:
    """Teacher softmax, losses and the input gradient (black-box: regulariser's only)."""
    return _serve(msg, context, schema.FEEDBACK, _feedback)


def verify(msg: Message, context: Context) -> Message:
    """Label verification (Eq. 3): teacher argmax and softmax for generated features."""
    return _serve(msg, context, schema.VERIFY, _verify)


def dfzsl_probe(msg: Message, context: Context) -> Message:
    """Scenario dfzsl: the cosine teacher's logits on probe features (metered)."""
    return _serve(msg, context, schema.DFZSL_PROBE, _dfzsl_probe)


def evaluate(msg: Message, context: Context) -> Message:
    """Score the service's model and the owner's own teacher on the local test split."""
    return _serve(msg, context, schema.EVALUATE, _evaluate)


def _check_query(x: np.ndarray, y: np.ndarray, st: OwnerState) -> None:
    data = st.data
    if x.shape[1] != data.dim or x.shape[0] != y.size:
        raise Refused(
            "policy",
            f"query features are {x.shape} for {y.size} labels; this owner's features are "
            f"{data.dim}-d: the generator's output size must match the owners' features",
        )
    if y.size and (y.min() < 0 or y.max() >= data.num_classes):
        raise Refused("policy", f"query labels outside 0..{data.num_classes - 1}")


def _check_model(weights: dict[str, np.ndarray], dim: int, num_classes: int) -> None:
    """Only a classifier over this owner's features and classes is scored (the MLP of AZSL,
    or DFZSL's cosine classifier): a bounded amount of work, and nothing the owner did not
    agree to run on its test split."""
    mlp = {n: tuple(t.shape) for n, t in classifier(dim, num_classes).state_dict().items()}
    cosine = {"weight": (num_classes, dim), "temperature": (1,)}
    got = {n: tuple(np.shape(w)) for n, w in weights.items()}
    if got != mlp and got != cosine:
        raise Refused(
            "policy",
            f"the model to evaluate is not a classifier of {dim}-d features over "
            f"{num_classes} classes (this owner scores nothing else)",
        )
