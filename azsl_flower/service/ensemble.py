"""How the service turns several owners' answers about one sample into one answer.

The rule (``ensemble-weighting``) is the same for generator feedback, verification and
the student's targets, so all three agree on which owner speaks for a class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from azsl_flower.common.config import Weighting

__all__ = [
    "Declarations",
    "combine",
    "joint_gates",
    "joint_gradient",
    "owner_weights",
]


@dataclass
class Declarations:
    """What the owners still in the run declared at set-up: feature size, the classes
    each one's teacher covers, and the benchmark's seen and unseen classes."""

    dim: int
    num_classes: int
    covered: list[np.ndarray]  # per owner: global classes its teacher knows
    seen: np.ndarray
    unseen: np.ndarray

    @property
    def coverage(self) -> np.ndarray:
        """Owners x classes boolean matrix."""
        m = np.zeros((len(self.covered), self.num_classes), dtype=bool)
        for o, c in enumerate(self.covered):
            m[o, c] = True
        return m

    @property
    def trainable(self) -> np.ndarray:
        """Classes at least one teacher knows: the generator learns these from feedback."""
        return np.flatnonzero(self.coverage.any(0))


def joint_gates(lse: list[np.ndarray]) -> np.ndarray:
    """Owners x samples: softmax over owners of each teacher's log-sum-exp of logits.

    One softmax over *every* owner's logits, classes several owners cover adding their
    exp-logits, is p(k|x̃) = sum_o gate_o(x̃) p_o(k|x̃): each owner's own softmax, weighted by
    how strongly it claims x̃ (its logits' log-sum-exp). With class-disjoint owners this is
    exactly the softmax over the concatenated logits: an owner that never saw class y can
    still say "x̃ looks like one of *my* classes", which coverage weighting cannot hear.
    """
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in lse])
    e = np.exp(stacked - stacked.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def joint_gradient(
    grads: list[np.ndarray],
    grads_lse: list[np.ndarray] | None,
    probs: list[np.ndarray],
    lse: list[np.ndarray],
    coverage: np.ndarray,
    y: np.ndarray,
) -> np.ndarray:
    """Input gradient of -log p_joint(y|x̃) (+ alpha R) from one answer per owner.

    -log p(y) = log sum_o exp(lse_o) - log sum_{o covers y} exp(logit_oy), so its gradient
    is sum_o gate_o grad(lse_o) - sum_{o covers y} rho_o grad(logit_oy) with rho_o the
    covering owners' share of exp(logit_oy). Each owner sent grad(lse_o) and
    grad(CE_o + alpha R_o) = grad(lse_o) - grad(logit_oy) + alpha grad(R_o), so the sum
    is exact in one round trip; its R part is the covering owners' (rho-weighted).
    One covering owner and no other: its own gradient exactly. Black-box (no
    ``grads_lse``; owners' gradients are alpha grad(R_o) only): sum_o rho_o grad_o.
    """
    gates = joint_gates(lse)
    rows = np.arange(y.size)
    claim = np.stack([np.asarray(p, dtype=np.float32)[rows, y] for p in probs]) * gates
    claim = claim * coverage[:, y]
    denom = claim.sum(0)
    fallback = coverage[:, y].astype(np.float32)  # y's teachers all give it 0: split evenly
    fallback = fallback / np.maximum(fallback.sum(0), 1.0)
    rho = np.where(denom > 0, claim / np.where(denom > 0, denom, 1.0), fallback)
    out = np.zeros_like(grads[0], dtype=np.float32)
    for o in range(len(grads)):
        out += rho[o][:, None] * grads[o]
        if grads_lse is not None:
            out += (gates[o] - rho[o])[:, None] * grads_lse[o]
    return out


def owner_weights(
    coverage: np.ndarray,
    y: np.ndarray,
    mode: Weighting = Weighting.COVERAGE,
    probs: list[np.ndarray] | None = None,
    lse: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Owners x samples weights for combining the owners' answers about each sample.

    ``coverage``: owners whose teacher covers the sample's class, equally (an owner that
    never saw a class has nothing to say about it). ``uniform``: every answering owner
    equally, covering or not: the naive baseline, where an owner's softmax is zero on
    classes it never saw and so dilutes the others. ``confidence``: covering owners in
    proportion to their teacher's probability of the intended class y (``probs``: per
    owner, samples x classes in the global label space); coverage weights where all of
    them give it 0. ``joint``: :func:`joint_gates` (needs ``lse``, per owner its logits'
    log-sum-exp per sample), whatever y is. Columns sum to 1, except (coverage,
    confidence) for classes nobody covers, which get 0 everywhere.
    """
    n_owners = coverage.shape[0]
    if mode == Weighting.UNIFORM:
        return np.full((n_owners, y.size), 1.0 / n_owners, dtype=np.float32)
    if mode == Weighting.JOINT:
        if lse is None or len(lse) != n_owners:
            raise ValueError("ensemble-weighting=joint needs every owner's log-sum-exp (lse)")
        return joint_gates(lse)
    w = coverage[:, y].astype(np.float32)  # owners x n
    if mode == Weighting.CONFIDENCE:
        if probs is None or len(probs) != n_owners:
            raise ValueError("ensemble-weighting=confidence needs every owner's probabilities")
        rows = np.arange(y.size)
        conf = np.stack([np.asarray(p, dtype=np.float32)[rows, y] for p in probs])
        conf = np.clip(np.nan_to_num(conf), 0.0, None) * w
        w = np.where(conf.sum(0) > 0, conf, w)  # all covering owners at 0: fall back
    elif mode != Weighting.COVERAGE:
        raise ValueError(
            f"unknown ensemble-weighting {mode!r}; choose one of {[w.value for w in Weighting]}"
        )
    denom = w.sum(0)
    return np.divide(w, denom, out=np.zeros_like(w), where=denom > 0)


def combine(
    per_owner: list[np.ndarray],
    coverage: np.ndarray,
    y: np.ndarray,
    probs: list[np.ndarray] | None = None,
    mode: Weighting = Weighting.COVERAGE,
    lse: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Combine per-sample answers (softmax, gradients...) of several owners into one.

    Weights come from :func:`owner_weights`. Under ``coverage`` and ``confidence`` a class
    covered by one owner gets that owner's answer exactly, and samples of a class nobody
    covers get zeros. Under ``joint``, softmaxes combine into the joint softmax; white-box
    gradients combine with :func:`joint_gradient` instead.
    """
    w = owner_weights(coverage, y, mode, probs, lse)
    out = np.zeros_like(per_owner[0], dtype=np.float32)
    for o, arr in enumerate(per_owner):
        out += w[o].reshape(-1, *([1] * (arr.ndim - 1))) * arr
    return out
