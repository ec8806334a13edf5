"""Virtual features: von Mises-Fisher samples around class directions (scipy's sampler).

``scipy.stats.vonmises_fisher`` draws them (Wood's rejection algorithm); nothing here is
a hand-written sampler. Samples are unit vectors, as the cosine teacher reads them.

scipy's public ``rvs`` rotates its samples with a d x d QR decomposition on every call
(5-60 s at d = 1280 on a shared 2-core CPU, most of a Caltech run), so the samples are drawn
around the north pole by the same frozen distribution's Wood sampler (its
``_rejection_sampling``, the step ``rvs`` runs before rotating; ``rvs`` itself where a scipy
lacks it) and carried to each class direction by a Householder reflection: vMF is invariant
under orthogonal maps, so a reflection taking the pole to mu_k turns vMF(pole, kappa)
samples into vMF(mu_k, kappa).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import vonmises_fisher

from azsl_flower.service.dfzsl.kappa import check_kappa

__all__ = ["MAX_PER_CLASS", "sample_vmf"]

MAX_PER_CLASS = 100_000


def sample_vmf(
    directions: np.ndarray,
    kappa: float | np.ndarray,
    per_class: int,
    seed: int,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` unit samples around each row of ``directions``; (x, y).

    ``kappa``: one concentration for all classes, or one per class. ``labels``: the class id
    of each row (default 0..C-1), repeated ``per_class`` times in ``y``.
    """
    mu = np.asarray(directions, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] == 0 or mu.shape[1] < 2:
        raise ValueError(f"directions must be a non-empty C x d matrix (d >= 2), got {mu.shape}")
    if not np.isfinite(mu).all():
        raise ValueError("directions hold NaN/inf")
    norms = np.linalg.norm(mu, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise ValueError("a class direction is the zero vector: it has no direction to sample")
    mu = mu / norms
    if (
        isinstance(per_class, bool)
        or int(per_class) != per_class
        or not 0 < per_class <= MAX_PER_CLASS
    ):
        raise ValueError(f"samples per class {per_class!r}: a whole number in 1..{MAX_PER_CLASS}")
    given = np.atleast_1d(np.asarray(kappa, dtype=object))
    kappas = np.broadcast_to(np.asarray([check_kappa(k) for k in given]), (mu.shape[0],))
    labels = np.arange(mu.shape[0]) if labels is None else np.asarray(labels, dtype=np.int64)
    if labels.shape != (mu.shape[0],):
        raise ValueError(f"labels {labels.shape} must give one class id per direction")
    rng = np.random.default_rng(seed)
    n = int(per_class)
    pole = np.zeros(mu.shape[1])
    pole[0] = 1.0
    x = np.empty((mu.shape[0] * n, mu.shape[1]), dtype=np.float64)
    for k in np.unique(kappas):  # one scipy draw per concentration
        rows = np.flatnonzero(kappas == k)
        drawn = _around_pole(pole, float(k), rows.size * n, rng)
        for j, c in enumerate(rows):
            x[c * n : (c + 1) * n] = _reflect(drawn[j * n : (j + 1) * n], pole, mu[c])
    return x.astype(np.float32), np.repeat(labels, n)


def _around_pole(pole: np.ndarray, kappa: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of scipy's vMF(pole, kappa), pole = e_1, without rvs's d x d rotation."""
    dist = vonmises_fisher(pole, kappa)
    wood = getattr(dist._dist, "_rejection_sampling", None)  # scipy >= 1.11
    if wood is None or pole.size <= 3:  # 2-d and 3-d have their own samplers in rvs
        return dist.rvs(n, random_state=rng)
    return np.asarray(wood(pole.size, kappa, n, rng)).reshape(n, pole.size)


def _reflect(x: np.ndarray, pole: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The Householder reflection that maps ``pole`` to ``target`` (unit vectors), on rows."""
    u = pole - target
    norm = np.linalg.norm(u)
    if norm < 1e-12:
        return x
    u = u / norm
    return x - 2.0 * np.outer(x @ u, u)
