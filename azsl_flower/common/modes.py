"""Response modes: what an owner's answer about a generated feature may reveal.

Shared by the service (what it asks, in its run config) and the owners (what they allow,
in their node config); parsing only, no owner state.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REGULARISER_ANSWERS", "TEACHER_ANSWERS", "TeacherAnswer", "parse_teacher_answer"]

# Least revealing first: a later entry tells the service strictly more.
TEACHER_ANSWERS = ("label", "topk", "probs", "logits")
REGULARISER_ANSWERS = ("none", "value", "gradient")


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

    def allows(self, asked: TeacherAnswer) -> bool:
        """Whether an owner giving at most ``self`` may answer ``asked``."""
        return asked.rank() <= self.rank()


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
