"""The vMF concentration kappa: DFZSL's angle rule and a dimension-aware alternative.

In d dimensions a vMF sample's expected cosine to its mean direction is
A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa). DFZSL's rule (kappa = 1/sigma^2 with
sigma = the largest over classes of the smallest angle to another class, / 6) ignores d: in
1280 dimensions its kappa gives samples almost orthogonal to their class direction. The
dimension-aware rule picks the kappa whose A_d(kappa) equals a cosine the teacher accepts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

__all__ = [
    "check_kappa",
    "dfzsl_kappa",
    "kappa_for_cosine",
    "mean_cosine",
]

_TAIL = 400  # backward recurrence steps for the Bessel ratio (converges long before)


def check_kappa(kappa: float) -> float:
    """kappa as a float, or a ValueError that says what a concentration must be."""
    try:
        value = float(kappa)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"vMF concentration kappa={kappa!r}: a finite number > 0 (larger: samples closer to "
            "their class direction)"
        )
    return value


def _check_dim(dim: int) -> int:
    if int(dim) != dim or dim < 2:
        raise ValueError(f"feature dimension {dim!r}: a whole number >= 2")
    return int(dim)


def mean_cosine(kappa: float, dim: int) -> float:
    """A_d(kappa): the expected cosine between a vMF(mu, kappa) sample and mu in ``dim`` dims.

    Computed as the ratio I_nu(k)/I_{nu-1}(k), nu = d/2, by the backward recurrence
    r_nu = 1 / (2 nu / k + r_{nu+1}) started from Amos' bound far above nu: stable where
    the Bessel functions themselves under- or overflow (d = 1280, small kappa).
    """
    kappa, dim = check_kappa(kappa), _check_dim(dim)
    nu = dim / 2.0
    top = nu + _TAIL
    r = kappa / (top + 0.5 + math.sqrt(kappa**2 + (top + 0.5) ** 2))  # Amos (1974) bound
    for k in range(_TAIL, -1, -1):
        r = 1.0 / (2.0 * (nu + k) / kappa + r)
    return r


def kappa_for_cosine(cosine: float, dim: int) -> float:
    """The kappa with A_d(kappa) = ``cosine`` (0 < cosine < 1)."""
    dim = _check_dim(dim)
    if not (math.isfinite(cosine) and 0.0 < cosine < 1.0):
        raise ValueError(f"target cosine {cosine!r}: strictly between 0 and 1")
    lo, hi = 1e-8, 1e3
    while mean_cosine(hi, dim) < cosine:
        hi *= 10.0
        if hi > 1e12:
            raise ValueError(f"cosine {cosine} needs kappa > 1e12 in {dim} dimensions")
    return float(brentq(lambda k: mean_cosine(k, dim) - cosine, lo, hi, xtol=1e-10, rtol=1e-10))


def dfzsl_kappa(directions: np.ndarray, factor: float = 1.0) -> float:
    """DFZSL's rule: sigma = max over classes of (smallest angle to another class) / 6,
    kappa = factor / sigma^2. Needs two or more distinct unit directions (rows)."""
    factor = check_kappa(factor)
    mu = np.asarray(directions, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] < 2:
        raise ValueError(f"DFZSL's kappa needs at least two class directions, got {mu.shape}")
    mu = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    cos = np.clip(mu @ mu.T, -1.0, 1.0)
    np.fill_diagonal(cos, -np.inf)
    nearest = np.arccos(np.clip(cos.max(1), -1.0, 1.0))  # smallest angle to another class
    sigma = float(nearest.max()) / 6.0
    if sigma <= 0:
        raise ValueError("two class directions coincide: DFZSL's kappa is undefined")
    return check_kappa(factor / sigma**2)
