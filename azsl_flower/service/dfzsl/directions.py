"""Class directions of a cosine teacher, recovered from its logits on probe features.

A cosine teacher's logit for class k is cos(x, w_k) / T: linear in the unit vector x. So
DFZSL's black-box matching (a cosine student cos(x, mu_k)/T fitted to the teacher's logits
by MSE, from the class text features) has a closed form here: ridge regression of T * logits
on the unit probes, shrunk towards a prior, then normalised. With at least d probes in
general position it recovers the directions exactly (temperature only scales them); with
fewer (an owner's query budget) the prior fills the directions the probes did not reach.
All probes travel in one round trip.
"""

from __future__ import annotations

import numpy as np

__all__ = ["match_directions", "merge_directions", "probe_features"]


def probe_features(dim: int, count: int, seed: int) -> np.ndarray:
    """``count`` probe features: uniform on the unit sphere (isotropic Gaussians, normalised),
    so every direction of the feature space is probed equally."""
    if int(count) != count or count < 1:
        raise ValueError(f"probe count {count!r}: a whole number >= 1")
    x = np.random.default_rng(seed).standard_normal((int(count), int(dim)))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def match_directions(
    probes: np.ndarray,
    logits: np.ndarray,
    temperature: float,
    prior: np.ndarray | None = None,
    ridge: float = 1e-4,
) -> np.ndarray:
    """Unit directions mu (C x d) minimising ||X mu^T - T L||^2 + ridge ||mu - prior||^2.

    ``probes`` X (n x d, unit rows), ``logits`` L (n x C), ``temperature`` T as the owner
    declared it. Without ``prior`` the shrinkage is towards zero.
    """
    x = np.asarray(probes, dtype=np.float64)
    target = np.asarray(logits, dtype=np.float64) * float(temperature)
    if x.ndim != 2 or target.ndim != 2 or x.shape[0] != target.shape[0]:
        raise ValueError(f"probes {x.shape} and logits {target.shape} must have the same rows")
    if not (np.isfinite(x).all() and np.isfinite(target).all()):
        raise ValueError("probes or logits hold NaN/inf")
    if not ridge > 0:
        raise ValueError(f"ridge={ridge!r}: must be > 0")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = x.shape[1]
    base = np.zeros((d, target.shape[1])) if prior is None else np.asarray(prior, np.float64).T
    if base.shape != (d, target.shape[1]):
        raise ValueError(f"prior {base.T.shape} must be C x d = {(target.shape[1], d)}")
    w = np.linalg.solve(x.T @ x + ridge * np.eye(d), x.T @ target + ridge * base).T
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise ValueError("a class direction came out zero: the teacher's logits carry no signal")
    return (w / norms).astype(np.float32)


def merge_directions(parts: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """One direction per class from several owners' (covered classes, directions): a class
    several owners cover gets the normalised mean of theirs; others stay zero rows."""
    total = None
    for classes, mu in parts:
        if total is None:
            total = np.zeros((num_classes, mu.shape[1]))
        np.add.at(total, np.asarray(classes), np.asarray(mu, dtype=np.float64))
    if total is None:
        raise ValueError("no owner's directions to merge")
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    return np.where(norms > 1e-12, total / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
