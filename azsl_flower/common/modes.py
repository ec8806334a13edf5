"""Response modes: what an owner's answer about a generated feature may reveal.

Shared by the service (what it asks, in its run config) and the owners (what they allow,
in their node config); parsing only, no owner state.
"""

from __future__ import annotations

from dataclasses import dataclass

# The regulariser R an owner computes: the registry's names (common/regularisers.py,
# torch-free, so common/defaults.py reads them without importing the owner side or torch).
from azsl_flower.common.regularisers import REGULARISERS

__all__ = [
    "REGULARISERS",
    "REGULARISER_ANSWERS",
    "REGULARISER_ORDER",
    "SCENARIO_CEILING",
    "TEACHER_ANSWERS",
    "TeacherAnswer",
    "feedback_fields",
    "parse_teacher_answer",
    "regulariser_allows",
    "scenario_reveals",
    "sends_statistics",
    "verify_fields",
]

# Least revealing first: a later entry tells the service strictly more.
TEACHER_ANSWERS = ("label", "topk", "probs", "logits")
REGULARISER_ANSWERS = ("none", "value", "statistics", "gradient")
# What each regulariser answer reveals, as a rank: the one place the order is written
# (owner/privacy.py reads it). ``statistics`` (the regulariser's class statistics, sent once
# at set-up) and ``gradient`` (∇ₓ[αR] per batch) rank equal: a regulariser with statistics
# computes its gradient from them and the service's generated batch alone, and the
# closed-form fit recovers them from the gradients exactly (the leakage audit: relative error
# ~4e-7), so neither tells the service more than the other. ``value`` (R per batch) is a
# function of the same statistics, recovered only with many crafted queries; ``none``: nothing.
REGULARISER_ORDER: dict[str, int] = {"none": 0, "value": 1, "statistics": 2, "gradient": 2}


@dataclass(frozen=True)
class TeacherAnswer:
    """``label`` (argmax only), ``topk:K`` (K largest probabilities, the rest 0), ``probs``
    (the softmax), ``logits`` (softmax and log-sum-exp of the logits: the logits exactly)."""

    kind: str
    k: int = 0

    def __str__(self) -> str:
        return f"topk:{self.k}" if self.kind == "topk" else self.kind

    def rank(self) -> tuple[int, int]:
        """Order by what is revealed: kind first, then K."""
        return TEACHER_ANSWERS.index(self.kind), self.k

    @property
    def whole(self) -> bool:
        """The answer is a whole softmax (rows sum to 1), not top-K or a label."""
        return self.kind in ("logits", "probs")

    def allows(self, asked: TeacherAnswer) -> bool:
        """Whether an owner giving at most ``self`` may answer ``asked``."""
        return asked.rank() <= self.rank()


# The least teacher-answer ceiling under which each scenario's answers stay: what the
# scenario reveals about the teacher whatever mode the service asks for. White-box answers
# each batch's cross-entropy and its input gradient: with batches of one sample and each
# label asked in turn, -log p_y for every y is the whole softmax (``probs``); dfzsl's probes
# are answered with logits; ``weights`` sends the teacher itself. Black-box answers only
# the asked mode (its regulariser fields never depend on the teacher).
SCENARIO_CEILING: dict[str, TeacherAnswer] = {
    "blackbox": TeacherAnswer("label"),
    "whitebox": TeacherAnswer("probs"),
    "dfzsl": TeacherAnswer("logits"),
    "weights": TeacherAnswer("logits"),
}


def scenario_reveals(scenario: str) -> TeacherAnswer:
    """The teacher answer ``scenario`` reveals at the least (an owner whose
    ``teacher-answer`` ceiling is below it refuses the scenario). Unknown: ``logits``, so an
    unrecognised scenario is never answered under a lower ceiling."""
    return SCENARIO_CEILING.get(scenario, TeacherAnswer("logits"))


def parse_teacher_answer(text: object, where: str = "teacher-answer") -> TeacherAnswer:
    """``logits``, ``probs``, ``topk:K`` (K >= 1) or ``label``; a clear error otherwise."""
    raw = str(text).strip().lower()
    kind, _, k = raw.partition(":")
    if kind == "topk":
        try:
            kk = int(k)
        except ValueError:
            kk = 0
        if kk >= 1:
            return TeacherAnswer("topk", kk)
    elif kind in TEACHER_ANSWERS and not k:
        return TeacherAnswer(kind)
    raise ValueError(
        f"{where}={text!r}: choose logits, probs, topk:K (K >= 1, the K largest probabilities) "
        "or label (the argmax only)"
    )


def regulariser_allows(ceiling: str, asked: str) -> bool:
    """Whether an owner answering at most ``ceiling`` may answer ``asked`` (by
    :data:`REGULARISER_ORDER`; an unknown name is never allowed)."""
    if ceiling not in REGULARISER_ORDER or asked not in REGULARISER_ORDER:
        return False
    return REGULARISER_ORDER[asked] <= REGULARISER_ORDER[ceiling]


def sends_statistics(regulariser_answer: str, scenario: str) -> bool:
    """Whether the owners send the regulariser's class statistics at set-up: scenario
    ``weights`` (beside the teacher) unless ``none``, and ``statistics`` in the AZSL
    scenarios (dfzsl computes no regulariser). Both ends read it: the owner sends, the
    service expects and rebuilds them."""
    if scenario == "weights":
        return regulariser_answer != "none"
    return regulariser_answer == "statistics" and scenario in ("whitebox", "blackbox")


def feedback_fields(
    teacher: TeacherAnswer, regulariser: str, whitebox: bool, lse_grad: bool
) -> frozenset[str]:
    """The arrays of a feedback reply in a mode: the owner sends exactly these, the service
    accepts nothing else (one rule for both ends of the wire)."""
    fields = {"probs"}
    if teacher.kind == "logits":
        fields.add("lse")
        if lse_grad and whitebox:
            fields.add("grad_lse")
    if whitebox or teacher.whole:
        fields.add("ce")  # it follows from the softmax (or the gradient) anyway
    if regulariser in ("value", "gradient"):  # statistics: R is the service's to compute
        fields.add("reg")
    if whitebox or regulariser == "gradient":
        fields.add("grad")
    return frozenset(fields)


def verify_fields(teacher: TeacherAnswer) -> frozenset[str]:
    """The arrays of a verification reply in a mode."""
    return frozenset({"pred", "probs", "lse"} if teacher.kind == "logits" else {"pred", "probs"})
