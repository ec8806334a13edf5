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
    TEACHER_ANSWERS,
    TeacherAnswer,
    parse_teacher_answer,
    scenario_reveals,
)
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


def _float(node: dict[str, Any], key: str, default: float) -> float:
    raw = node.get(key, default)
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise ValueError(f"node-config {key}={raw!r}: a number >= 0")
    return value


def _int(node: dict[str, Any], key: str, default: int, low: int) -> int:
    raw = node.get(key, default)
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = low - 1
    if value < low:
        raise ValueError(f"node-config {key}={raw!r}: a whole number >= {low}")
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
        """δ of every mechanism of this owner (the default 1/(10 n) for n training images)."""
        return self.teacher_delta if self.teacher_delta > 0 else 1.0 / (10.0 * max(n, 1))

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
            and self.regulariser_answer != "gradient"
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
        if REGULARISER_ANSWERS.index(regulariser) > REGULARISER_ANSWERS.index(
            self.regulariser_answer
        ):
            problems.append(
                f"regulariser-answer={regulariser} asks more than this owner gives (node config "
                f"regulariser-answer={self.regulariser_answer}; gradient > value > none)"
            )
        if problems:
            raise Refused("policy", "this owner refuses the request: " + "; ".join(problems))


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
    eps = {}
    for key in ("teacher-epsilon", "stats-epsilon"):
        value = _float(node, key, math.inf)
        eps[key] = math.inf if value == 0 else value
    delta = _float(node, "teacher-delta", 0.0)
    if delta >= 1:
        raise ValueError(f"node-config teacher-delta={delta!r}: in [0, 1) (0: 1/(10 n))")
    clip = _float(node, "stats-clip", 0.0)
    if math.isfinite(eps["stats-epsilon"]) and not (0 < clip < math.inf):
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
    limit = _float(node, "epsilon-limit", math.inf)
    limit = math.inf if limit == 0 else limit
    dp_clip = _float(node, "dp-clip", default.dp_clip)
    if not 0 < dp_clip < math.inf:
        raise ValueError(f"node-config dp-clip={dp_clip!r}: a number > 0")
    return OwnerPrivacy(
        teacher_answer=teacher,
        regulariser_answer=regulariser,
        answer_decimals=_int(node, "answer-decimals", -1, -1),
        teacher_epsilon=eps["teacher-epsilon"],
        teacher_delta=delta,
        stats_epsilon=eps["stats-epsilon"],
        stats_clip=clip,
        dp_clip=dp_clip,
        dp_batch_size=_int(node, "dp-batch-size", default.dp_batch_size, 1),
        dp_epochs=_int(node, "dp-epochs", default.dp_epochs, 1),
        dp_lr=_float(node, "dp-lr", default.dp_lr),
        teacher_model=model,
        epsilon_limit=limit,
    )
