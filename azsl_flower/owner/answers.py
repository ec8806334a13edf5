"""The owner's answers shaped to the response mode asked (and allowed by its policy).

The same functions serve the owner's handlers and the leakage audit, so the audit attacks
exactly what an owner sends. Modes (see :mod:`azsl_flower.owner.privacy`):

- teacher answer ``logits``: softmax and log-sum-exp of the logits (together: the logits);
  ``probs``: the softmax only; ``topk:K``: the K largest probabilities, the rest 0;
  ``label``: a one-hot argmax. The per-batch cross-entropy value goes with ``logits`` and
  ``probs`` (it follows from them) and with white-box, which only an owner at ``probs`` or
  above answers (per-sample losses and their gradients reveal the whole softmax).
- regulariser answer ``gradient``: ∇ₓ[α·R] (white-box: inside the gradient it returns);
  ``value``: R per batch, no gradient of R; ``statistics``: R's class statistics, sent once
  at set-up (exact, or the ``stats-epsilon`` release), and nothing about R in any feedback
  reply (white-box: the teacher's gradient only); ``none``: nothing about R.
- black-box without ``gradient`` is *strict*: the reply holds outputs only, no gradient
  array at all.
- ``answer-decimals`` ≥ 0 (owner's node config): every number answered is rounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from azsl_flower.common.modes import TeacherAnswer, feedback_fields, parse_teacher_answer
from azsl_flower.owner.oracle import FeedbackOracle
from azsl_flower.owner.privacy import OwnerPrivacy

__all__ = ["asked_modes", "feedback_answer", "rounded", "shape_probs", "verify_answer"]


def asked_modes(settings: dict[str, Any]) -> tuple[TeacherAnswer, str]:
    """The (teacher answer, regulariser answer) a request's run settings ask for."""
    teacher = parse_teacher_answer(settings.get("teacher-answer", "logits"))
    return teacher, str(settings.get("regulariser-answer", "gradient"))


def shape_probs(probs: np.ndarray, mode: TeacherAnswer) -> np.ndarray:
    """Softmax rows reduced to what ``mode`` reveals (``topk``: K largest, ``label``: one-hot)."""
    if mode.whole or probs.shape[0] == 0:
        return probs
    k = 1 if mode.kind == "label" else min(mode.k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    out = np.zeros_like(probs)
    rows = np.arange(probs.shape[0])[:, None]
    out[rows, top] = 1.0 if mode.kind == "label" else probs[rows, top]
    return out


def rounded(arrays: dict[str, np.ndarray], decimals: int) -> dict[str, np.ndarray]:
    if decimals < 0:
        return arrays
    return {
        k: np.round(v, decimals).astype(v.dtype) if v.dtype.kind == "f" else v
        for k, v in arrays.items()
    }


def feedback_answer(
    oracle: FeedbackOracle,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    settings: dict[str, Any],
    policy: OwnerPrivacy,
    lse_grad: bool = False,
) -> dict[str, np.ndarray]:
    """The reply arrays to a feedback request, in the asked mode. Checked against ``policy``
    again here (a sealed refusal), so nothing calling this can answer past the owner's
    ceiling: the handlers checked already, the audit attacks what this returns."""
    policy.check(settings)
    teacher, regulariser = asked_modes(settings)
    whitebox = str(settings.get("scenario")) in ("whitebox", "weights")
    fields = feedback_fields(teacher, regulariser, whitebox, lse_grad)
    out = oracle.feedback(
        x,
        y,
        batch_size,
        whitebox,
        float(settings["alpha"]),
        lse_grad="grad_lse" in fields,
        # statistics: sent once at set-up; the service computes R and its gradient itself
        regulariser="none" if regulariser == "statistics" else regulariser,
    )
    out["probs"] = shape_probs(out["probs"], teacher)
    reply = {k: v for k, v in out.items() if k in fields}
    return rounded(reply, policy.answer_decimals)


def verify_answer(
    oracle: FeedbackOracle, x: np.ndarray, settings: dict[str, Any], policy: OwnerPrivacy
) -> dict[str, np.ndarray]:
    """Verification reply: the (shaped) softmax and its argmax; ``logits``: also lse (checked
    against ``policy`` like :func:`feedback_answer`)."""
    policy.check(settings)
    teacher, _ = asked_modes(settings)
    raw, lse = oracle.probs_lse(x)
    probs = rounded({"p": shape_probs(raw.astype(np.float32), teacher)}, policy.answer_decimals)
    reply = {"pred": raw.argmax(1).astype(np.int64), "probs": probs["p"]}
    if teacher.kind == "logits":
        reply |= rounded({"lse": lse}, policy.answer_decimals)
    return reply
