"""What an owner is willing to reveal: its response modes and differential privacy.

The owner decides, not the service: its node config names the *most* revealing answer it
gives (``teacher-answer``, ``regulariser-answer``), how its answers are rounded, and its
differential-privacy targets (the scenarios it answers at all are ``allowed-scenarios``).
The service asks for a mode in its run config (same key names); an owner refuses a request
that asks for more than this policy allows, before doing any work.

These keys are rows of the owner policy (:data:`azsl_flower.owner.policy.KEYS`, which
rejects unknown keys and documents them); :func:`owner_privacy` turns the ones a node
config sets into an :class:`OwnerPrivacy` and checks how they combine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from azsl_flower.common.models import TEACHER_NETWORKS
from azsl_flower.common.modes import (
    REGULARISER_ANSWERS,
    REGULARISER_ORDER,
    TEACHER_ANSWERS,
    TeacherAnswer,
    parse_teacher_answer,
    regulariser_allows,
    scenario_reveals,
)
from azsl_flower.common.regularisers import REGISTRY, names_where
from azsl_flower.owner.policy_values import number, whole_number
from azsl_flower.wire.errors import Refused

__all__ = [
    "NODE_KEYS",
    "REGULARISER_ANSWERS",
    "TEACHER_ANSWERS",
    "OwnerPrivacy",
    "TeacherAnswer",
    "owner_privacy",
    "parse_teacher_answer",
]


# Ranges of the numeric keys: each finite and stated in the error an owner sees.
MAX_EPSILON = 1000.0  # a DP target above this bounds nothing; Opacus still plans it in seconds
MAX_DP_BATCH = 2**20  # expected DP-SGD batch (Poisson sampling)
MAX_DP_EPOCHS = 10_000
MAX_DP_LR = 10.0  # simulations/bench/dp_settings.py tries rates up to 2 (SGD, momentum 0.9)
# A float32 answer carries at most 9 significant decimal digits (9 round-trip any float32),
# so 9 decimals keep every digit of any answer of magnitude 1 or more; from 39 decimals on
# float32's 10**d overflows and every rounded answer becomes NaN.
MAX_ANSWER_DECIMALS = 9
NOT_PRIVATE = ("", "inf")  # spellings of "not private" / "no limit", besides 0


def _span(low: float, high: float) -> str:
    """The range (low, high] as the error messages write it; an infinite end is open."""
    return f"({low:g}, {high:g}]" if math.isfinite(high) else f"({low:g}, inf)"


def _number(node: dict[str, Any], key: str, default: object, low: float, high: float) -> float:
    """A finite number in (low, high]; the error names the key, the value and the range."""
    raw = node.get(key, default)
    value = number(raw)
    if not (math.isfinite(value) and low < value <= high):
        raise ValueError(f"node-config {key}={raw!r}: a finite number in {_span(low, high)}")
    return value


def _int(node: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """A whole number in low..high (refuses 1.5, 'ten' and True alike)."""
    raw = node.get(key, default)
    value = whole_number(raw)
    if value is None or not low <= value <= high:
        raise ValueError(f"node-config {key}={raw!r}: a whole number in {low}..{high}")
    return value


def _unbounded_or(node: dict[str, Any], key: str, high: float, meaning: str) -> float:
    """``inf`` for empty, 0 or ``inf`` (``meaning``), else a finite number in
    (0, high]."""
    raw = node.get(key, "")
    text = str(raw).strip().lower()
    value = number(text)
    if text in NOT_PRIVATE or value == 0:
        return math.inf
    if not (math.isfinite(value) and 0 < value <= high):
        raise ValueError(
            f"node-config {key}={raw!r}: a finite number in {_span(0, high)}, or empty, 0 or "
            f"inf ({meaning})"
        )
    return value


def _zero_or(node: dict[str, Any], key: str, high: float, meaning: str) -> float:
    """0.0 for empty or 0 (``meaning``), else a finite number in (0, high)."""
    raw = node.get(key, "")
    value = 0.0 if str(raw).strip() == "" else number(raw)
    if value != 0 and not (math.isfinite(value) and 0 < value < high):
        span = _span(0, high).replace("]", ")")
        raise ValueError(
            f"node-config {key}={raw!r}: a finite number in {span}, or empty or 0 ({meaning})"
        )
    return value


@dataclass(frozen=True)
class OwnerPrivacy:
    """One owner's response modes and differential-privacy settings (its node config).

    ``teacher_epsilon`` / ``stats_epsilon`` = inf: that part is not differentially private.
    ``teacher_delta`` = 0: 1/(10 n), n the owner's training images.
    """

    teacher_answer: TeacherAnswer = TeacherAnswer("logits")
    regulariser_answer: str = "gradient"
    answer_decimals: int = -1  # round every answered number to this many decimals; -1: exact
    teacher_epsilon: float = math.inf
    teacher_delta: float = 0.0
    stats_epsilon: float = math.inf
    stats_clip: float = 0.0  # per-record L2 bound of the features for the statistics release
    dp_clip: float = 1.0  # DP-SGD per-sample gradient norm bound
    dp_batch_size: int = 512  # DP-SGD expected batch (Poisson sampling)
    dp_epochs: int = 30  # DP-SGD passes (the owner's: never the run's teacher-epochs)
    dp_lr: float = 0.2  # DP-SGD learning rate (SGD, momentum 0.9)
    teacher_model: str = "auto"  # mlp | linear | auto (linear with teacher-epsilon)
    epsilon_limit: float = math.inf  # the most all this owner's DP releases may compose to

    @property
    def dp_teacher(self) -> bool:
        return math.isfinite(self.teacher_epsilon)

    @property
    def teacher_network(self) -> str:
        """The teacher's network: ``teacher-model``, with ``auto`` resolved (DP-SGD noise grows
        with the parameter count, so a DP teacher is linear unless the owner says otherwise)."""
        if self.teacher_model != "auto":
            return self.teacher_model
        return "linear" if self.dp_teacher else "mlp"

    @property
    def dp_stats(self) -> bool:
        return math.isfinite(self.stats_epsilon)

    def delta(self, n: int) -> float:
        """δ of every mechanism of this owner (the default 1/(10 n) for n training images).

        A δ of 1/n or more lets a mechanism publish one training image outright and still
        meet (ε, δ); n is known only once the data is loaded, so this is where it is refused
        (a sealed ``policy`` refusal: set-up declares δ, so it fails there first)."""
        n = max(int(n), 1)
        if self.teacher_delta <= 0:
            return 1.0 / (10.0 * n)
        if self.teacher_delta >= 1.0 / n:
            raise Refused(
                "policy",
                f"node-config teacher-delta={self.teacher_delta:g} is not below "
                f"1/n = {1.0 / n:.3g} (n = {n} training images of this owner): a δ that large "
                "lets a mechanism "
                f"publish a training image outright; set it below 1/n, or leave it empty for "
                f"1/(10 n) = {1.0 / (10.0 * n):.3g}",
            )
        return self.teacher_delta

    def fingerprint(self) -> dict[str, Any]:
        """What the teacher and statistics depend on (part of the owner's cache key)."""
        d = asdict(self)
        d["teacher_answer"] = str(self.teacher_answer)
        return {
            k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()
        }

    def check(self, settings: dict[str, Any]) -> None:
        """Refuse (a sealed ``policy`` refusal) a request whose asked modes exceed this policy."""
        scenario = str(settings.get("scenario", "whitebox"))
        try:
            teacher = parse_teacher_answer(settings.get("teacher-answer", "logits"))
        except ValueError as exc:
            raise Refused("policy", str(exc)) from None
        regulariser = str(settings.get("regulariser-answer", "gradient"))
        if regulariser not in REGULARISER_ANSWERS:
            raise Refused(
                "policy",
                f"regulariser-answer={regulariser!r} is not a mode; choose one of "
                f"{list(REGULARISER_ANSWERS)}",
            )
        problems = []
        needs = scenario_reveals(scenario)
        if not self.teacher_answer.allows(needs):
            problems.append(
                f"scenario={scenario} {_REVEALS.get(scenario, 'reveals the logits')}, more than "
                f"this owner's teacher-answer={self.teacher_answer} allows (it needs "
                f"teacher-answer={needs} or more{_INSTEAD.get(scenario, '')})"
            )
        if (
            scenario == "weights"
            and regulariser != "none"
            and not regulariser_allows(self.regulariser_answer, "statistics")
        ):
            problems.append(
                "scenario=weights sends the regulariser's class means and variances themselves "
                f"(unless regulariser-answer=none), more than this owner's "
                f"regulariser-answer={self.regulariser_answer} allows; ask regulariser-answer=none"
            )
        if not self.teacher_answer.allows(teacher):
            problems.append(
                f"teacher-answer={teacher} asks more than this owner gives "
                f"(node config teacher-answer={self.teacher_answer}); ask for "
                f"{self.teacher_answer} or less (logits > probs > topk:K > label)"
            )
        if not regulariser_allows(self.regulariser_answer, regulariser):
            problems.append(
                f"regulariser-answer={regulariser} asks more than this owner gives (node config "
                f"regulariser-answer={self.regulariser_answer}; {_REGULARISER_ORDER})"
            )
        problems += _statistics_problems(settings, regulariser, self.regulariser_answer)
        if problems:
            raise Refused("policy", "this owner refuses the request: " + "; ".join(problems))


# The order as the refusals write it, from REGULARISER_ORDER (most revealing first).
_REGULARISER_ORDER = " > ".join(
    " = ".join(n for n in REGULARISER_ANSWERS if REGULARISER_ORDER[n] == rank)
    for rank in sorted(set(REGULARISER_ORDER.values()), reverse=True)
)


def _statistics_problems(settings: dict[str, Any], asked: str, ceiling: str) -> list[str]:
    """``statistics`` and ``gradient`` rank equal only for a regulariser whose gradient is
    computed from its class statistics: one without them (MMD keeps real samples) has none
    to send, and its gradient says something other than statistics, so a ``statistics``
    owner does not give it."""
    name = str(settings.get("regulariser", "kl"))
    kind = REGISTRY.get(name)
    if kind is None or not kind.reads_data or kind.has_statistics:
        return []  # unknown names are refused where the state is built (check_settings)
    with_stats = names_where(lambda k: k.has_statistics)
    if asked == "statistics":
        return [
            f"regulariser-answer=statistics: regulariser={name} has no class statistics to "
            f"send (ask regulariser-answer=gradient, or regulariser={with_stats})"
        ]
    if asked == "gradient" and ceiling == "statistics":
        return [
            f"regulariser-answer=gradient of regulariser={name} reveals more than class "
            f"statistics, and this owner gives at most regulariser-answer=statistics (ask "
            f"regulariser={with_stats})"
        ]
    return []


# What each scenario reveals about the teacher beyond the asked mode (SCENARIO_CEILING).
_REVEALS = {
    "whitebox": "answers each batch's cross-entropy and its input gradient: with batches of "
    "one sample (each label asked in turn) they reveal the whole softmax",
    "dfzsl": "answers probes with the teacher's logits",
    "weights": "sends the teacher itself",
}
_INSTEAD = {"whitebox": "; an owner below it answers scenario=blackbox"}


NODE_KEYS = (
    "teacher-answer",
    "regulariser-answer",
    "answer-decimals",
    "teacher-epsilon",
    "teacher-delta",
    "stats-epsilon",
    "stats-clip",
    "dp-clip",
    "dp-batch-size",
    "dp-epochs",
    "dp-lr",
    "teacher-model",
    "epsilon-limit",
)


def owner_privacy(node_config: dict[str, Any]) -> OwnerPrivacy:
    """This owner's :class:`OwnerPrivacy` from its node config (absent keys: the defaults).

    ``teacher-epsilon`` / ``stats-epsilon``: 0, ``inf`` or absent mean "not private".
    """
    node = dict(node_config)
    default = OwnerPrivacy()
    teacher = parse_teacher_answer(
        node.get("teacher-answer", str(default.teacher_answer)), "node-config teacher-answer"
    )
    regulariser = str(node.get("regulariser-answer", default.regulariser_answer)).strip()
    if regulariser not in REGULARISER_ANSWERS:
        raise ValueError(
            f"node-config regulariser-answer={regulariser!r}: choose one of "
            f"{list(REGULARISER_ANSWERS)}"
        )
    eps = {
        key: _unbounded_or(node, key, MAX_EPSILON, "not private")
        for key in ("teacher-epsilon", "stats-epsilon")
    }
    # δ < 1/n as well, n the training images: checked where n is known (OwnerPrivacy.delta)
    delta = _zero_or(node, "teacher-delta", 1.0, "1/(10 n), n the training images")
    clip = _zero_or(node, "stats-clip", math.inf, "no statistics release")
    if math.isfinite(eps["stats-epsilon"]) and not clip > 0:
        raise ValueError(
            "node-config stats-epsilon needs stats-clip: a bound on your feature vectors' L2 "
            "norm, chosen without looking at them (e.g. from the feature extractor's range); "
            "longer vectors are scaled down to it before the statistics are released"
        )
    model = str(node.get("teacher-model", default.teacher_model)).strip()
    if model not in ("auto", *TEACHER_NETWORKS):
        raise ValueError(
            f"node-config teacher-model={model!r}: choose one of {['auto', *TEACHER_NETWORKS]}"
        )
    return OwnerPrivacy(
        teacher_answer=teacher,
        regulariser_answer=regulariser,
        answer_decimals=_int(node, "answer-decimals", -1, -1, MAX_ANSWER_DECIMALS),
        teacher_epsilon=eps["teacher-epsilon"],
        teacher_delta=delta,
        stats_epsilon=eps["stats-epsilon"],
        stats_clip=clip,
        dp_clip=_number(node, "dp-clip", default.dp_clip, 0.0, math.inf),
        dp_batch_size=_int(node, "dp-batch-size", default.dp_batch_size, 1, MAX_DP_BATCH),
        dp_epochs=_int(node, "dp-epochs", default.dp_epochs, 1, MAX_DP_EPOCHS),
        dp_lr=_number(node, "dp-lr", default.dp_lr, 0.0, MAX_DP_LR),
        teacher_model=model,
        epsilon_limit=_unbounded_or(node, "epsilon-limit", math.inf, "no limit"),
    )
