"""What the strategy's phases exchange: a request (``configure_*``) and what the owners'
answers become (``aggregate_*``), one typed value per phase."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from azsl_flower.common.metrics import ClassCounts
from azsl_flower.wire import schema

__all__ = ["Evaluation", "Feedback", "Request", "Verified", "sum_counts"]


@dataclass
class Request:
    """One round trip: a message kind, its payloads (``schema.encode`` keywords), the owners."""

    kind: schema.Kind
    phase: str
    payloads: list[dict[str, object]]
    nodes: list[int]
    # checks each owner's authentic answers against this request (strategies.checks)
    check: Callable[[int, list[schema.Payload]], None] | None = None

    @property
    def samples(self) -> int:
        """Generated samples it asks about: what an owner counts against its budget."""
        return sum(self.kind.queried(p.get("arrays") or {}) for p in self.payloads)  # type: ignore[arg-type]


@dataclass
class Feedback:
    """One pool's answers combined over the owners: what the generator update uses."""

    probs: np.ndarray
    grad: np.ndarray | None  # None: the owners' mode sends no gradient (strict black-box)
    ce: np.ndarray  # NaN where the owners' mode sends none
    reg: np.ndarray

    def stats(self, y: np.ndarray) -> dict[str, float]:
        out = {"agreement": float(np.mean(self.probs.argmax(1) == y))}
        for name, values in (("teacher_ce", self.ce), ("regulariser", self.reg)):
            if np.isfinite(values).all():
                out[name] = float(np.mean(values))
        return out


@dataclass
class Verified:
    """Verification (Eq. 3): generated samples, the teachers' combined softmax, which to keep."""

    x: np.ndarray
    y: np.ndarray
    probs: np.ndarray
    keep: np.ndarray
    report: dict[str, object]


@dataclass
class Evaluation:
    """Summed per-class counts: each model's, the teachers', each owner's own teacher's."""

    models: dict[str, ClassCounts]
    teacher: ClassCounts
    per_owner: dict[int, ClassCounts]
    curves: dict[str, list[dict[str, float]]]


def sum_counts(replies: list[schema.Payload], who: str) -> ClassCounts:
    """Per-class counts of ``who`` ('model' or 'teacher') summed over the replies."""
    fields = ClassCounts.__dataclass_fields__
    total = None
    for r in replies:
        c = ClassCounts(*(r.arrays[f"{who}_{f}"] for f in fields))
        total = c if total is None else total + c
    assert total is not None
    return total
