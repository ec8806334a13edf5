"""What the strategy's phases exchange: a request (``configure_*``) and what the owners'
answers become (``aggregate_*``), one typed value per phase."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    nodes: list[int] = field(default_factory=list)  # who verified: the phase's contributors


@dataclass
class Evaluation:
    """Summed per-class counts: each model's, the teachers', each owner's own teacher's."""

    models: dict[str, ClassCounts]
    teacher: ClassCounts
    per_owner: dict[int, ClassCounts]
    curves: dict[str, list[dict[str, float]]]


def sum_counts(replies: list[schema.Payload], who: str) -> ClassCounts:
    """Per-class counts of ``who`` ('model' or 'teacher') summed over the replies.

    The checks bound each count (:data:`strategies.checks.MAX_COUNT`), so int64 holds any
    real sum; the sum is still taken exactly and refused rather than wrapped around, as
    numpy's int64 addition would do silently.
    """
    if not replies:
        raise ValueError(f"no reply to sum the {who}'s counts over")
    fields = ClassCounts.__dataclass_fields__
    return ClassCounts(*(_exact_sum([r.arrays[f"{who}_{f}"] for r in replies], f) for f in fields))


_INT64_MAX = int(np.iinfo(np.int64).max)


def _exact_sum(arrays: list[np.ndarray], name: str) -> np.ndarray:
    total = np.sum(np.stack(arrays).astype(object), axis=0)  # Python ints: no wrap-around
    if any(int(v) < 0 or int(v) > _INT64_MAX for v in np.ravel(total)):
        raise OverflowError(f"the owners' {name} counts sum outside [0, {_INT64_MAX}]")
    return np.asarray(total, dtype=np.int64)
