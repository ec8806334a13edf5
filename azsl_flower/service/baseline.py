"""What the owners' answers give away without any generator: class statistics and a
nearest-class-mean (NCM) classifier built from them.

The KL regulariser's input gradient is affine in the generated features: for a class
with n ≥ 2 samples in a batch of K such classes, in dimension d,

    g_id · K·D·n/α + (x_id − m_d)/v_d  =  x_id / σ²_d  −  μ_d / σ²_d

(m, v: the batch's own mean and variance; μ, σ²: the owner's). The service knows x, m, v,
K, D, n and α, so one least-squares line per class and dimension returns the owner's mean
and variance (:class:`KLStatsFit`). In black-box mode with regulariser gradients this is
exact; against DP statistics it returns the noisy ones, no more; in white-box mode the
teacher's cross-entropy gradient is mixed in and this naive fit is biased (the audit,
``simulations/bench/audit.py``, shows a stronger request that removes it).

:func:`ncm_classifier` writes an NCM classifier as the project's classifier MLP, so owners
score it like any other model: every results table carries it as the baseline that shows
what the generator and student add over the released statistics alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from azsl_flower.common.models import classifier

__all__ = [
    "REVEALED_FITS",
    "KLStatsFit",
    "StatisticsFit",
    "class_means",
    "lda_classifier",
    "ncm_classifier",
    "pooled_variance",
]


class KLStatsFit:
    """Accumulates per class and dimension the least-squares sums of the affine fit."""

    def __init__(self, num_classes: int, dim: int) -> None:
        shape = (num_classes, dim)
        self.n = np.zeros(shape)
        self.sx = np.zeros(shape)
        self.sxx = np.zeros(shape)
        self.st = np.zeros(shape)
        self.sxt = np.zeros(shape)

    def add(
        self,
        x: np.ndarray,
        y: np.ndarray,
        grad: np.ndarray,
        alpha: float,
        batch_size: int,
        covered: np.ndarray,
    ) -> None:
        """One answered pool: features, labels, the owners' (combined) gradient, α.

        ``covered``: classes the answering owners' regulariser knows (others add no term).
        """
        if alpha <= 0:
            return
        x64, g64 = x.astype(np.float64), grad.astype(np.float64)
        d = x.shape[1]
        known = np.zeros(max(int(y.max(initial=0)) + 1, covered.max(initial=0) + 1), bool)
        known[covered] = True
        for i in range(0, y.size, batch_size):
            yb, xb, gb = y[i : i + batch_size], x64[i : i + batch_size], g64[i : i + batch_size]
            classes, counts = np.unique(yb, return_counts=True)
            terms = [c for c, k in zip(classes, counts, strict=True) if k >= 2 and known[c]]
            for c in terms:
                rows = yb == c
                xc, gc = xb[rows], gb[rows]
                n = xc.shape[0]
                m = xc.mean(0)
                v = xc.var(0) + 1e-6
                t = gc * len(terms) * d * n / alpha + (xc - m) / v
                self.n[c] += n
                self.sx[c] += xc.sum(0)
                self.sxx[c] += (xc**2).sum(0)
                self.st[c] += t.sum(0)
                self.sxt[c] += (xc * t).sum(0)

    def estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(means, variances, classes with an estimate). Dimensions the queries never
        varied (or that fit a non-positive precision) get the mean of the queries there."""
        classes = np.flatnonzero(self.n[:, 0] >= 2)
        n, sx, sxx = self.n[classes], self.sx[classes], self.sxx[classes]
        st, sxt = self.st[classes], self.sxt[classes]
        den = n * sxx - sx**2
        ok = den > 1e-9 * np.maximum(n * sxx, 1e-30)
        a = np.where(ok, (n * sxt - sx * st) / np.where(ok, den, 1.0), np.nan)
        c0 = (st - np.nan_to_num(a) * sx) / n
        ok &= a > 0
        mean = np.where(ok, -c0 / np.where(ok, a, 1.0), sx / n)
        var = np.where(ok, 1.0 / np.where(ok, a, 1.0), np.nan)
        return mean.astype(np.float32), var.astype(np.float32), classes


class StatisticsFit(Protocol):
    """A closed-form fit of the class statistics a regulariser's gradients reveal."""

    def add(
        self,
        x: np.ndarray,
        y: np.ndarray,
        grad: np.ndarray,
        alpha: float,
        batch_size: int,
        covered: np.ndarray,
    ) -> None: ...

    def estimate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


# The service's fit of what each regulariser's gradients reveal, by its registered name
# (azsl_flower/common/regularisers.py): (num_classes, dim) -> fit. Not listed: none.
REVEALED_FITS: dict[str, Callable[[int, int], StatisticsFit]] = {"kl": KLStatsFit}


def class_means(x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means of (generated) features: (means of present classes, those classes)."""
    classes = np.unique(y)
    return np.stack([x[y == c].mean(0) for c in classes]).astype(np.float32), classes


def ncm_classifier(
    means: np.ndarray, classes: np.ndarray, num_classes: int
) -> nn.Sequential | None:
    """A nearest-class-mean classifier as the classifier MLP: logit_c = 2 μ_c·x − |μ_c|².

    Classes without a mean get a logit far below any other. None when the MLP's widths
    cannot hold 2 units per class (over 256 classes).
    """
    full = np.zeros((num_classes, means.shape[1]), np.float64)
    full[classes] = means
    return _linear_mlp(full, -(full**2).sum(1), classes)


def pooled_variance(variances: np.ndarray) -> np.ndarray:
    """One diagonal variance shared by all classes: the mean over classes of each
    dimension's variance. Unknown (NaN) or non-positive entries are skipped; a dimension
    with none gets the mean of the others (1 if there are none: LDA becomes NCM)."""
    v = np.where(np.isfinite(variances) & (variances > 0), variances, np.nan).astype(np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
        pooled = np.nanmean(v, 0) if v.size else np.full(variances.shape[-1], np.nan)
    fill = float(np.nanmean(pooled)) if np.isfinite(pooled).any() else 1.0
    pooled = np.where(np.isfinite(pooled), pooled, fill)
    return np.maximum(pooled, 1e-6 * fill)


def lda_classifier(
    means: np.ndarray, variances: np.ndarray, classes: np.ndarray, num_classes: int
) -> nn.Sequential | None:
    """A Gaussian classifier with one diagonal variance σ² pooled over classes (LDA, equal
    priors), as the classifier MLP: logit_c = 2 x·(μ_c/σ²) − Σ_d μ_cd²/σ²_d, linear in x,
    so it is written as :func:`ncm_classifier` is, with μ_c/σ² in the first layer. Where the
    released statistics carry variances, it weighs each dimension by how tight the classes
    are in it, which NCM cannot. None over 256 classes (as NCM)."""
    var = pooled_variance(variances)
    full = np.zeros((num_classes, means.shape[1]), np.float64)
    full[classes] = means
    return _linear_mlp(full / var, -(full**2 / var).sum(1), classes)


def _linear_mlp(w: np.ndarray, b: np.ndarray, classes: np.ndarray) -> nn.Sequential | None:
    """logit_c = 2 w_c·x + b_c as the classifier MLP (classes not in ``classes``: −1e30).

    The two LeakyReLU layers pass ±w·x through unchanged (h(s) − h(−s) = 1.2 s for slope
    0.2); dropout is off at evaluation.
    """
    c, dim = w.shape
    if 2 * c > 512:
        return None
    have = np.zeros(c, bool)
    have[classes] = True
    model = classifier(dim, c)
    w0 = np.zeros((1024, dim))
    w0[:c], w0[c : 2 * c] = w, -w
    w3 = np.zeros((512, 1024))
    eye = np.eye(c) / 1.2
    w3[:c, :c], w3[:c, c : 2 * c] = eye, -eye
    w3[c : 2 * c] = -w3[:c]
    w6 = np.zeros((c, 512))
    w6[:, :c], w6[:, c : 2 * c] = 2 * np.eye(c) / 1.2, -2 * np.eye(c) / 1.2
    b6 = np.where(have, b, -1e30)
    state = {
        "0.weight": w0,
        "0.bias": np.zeros(1024),
        "3.weight": w3,
        "3.bias": np.zeros(512),
        "6.weight": w6,
        "6.bias": b6,
    }
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()})
    return model.eval()
