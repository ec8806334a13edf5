"""Real-data baselines for DFZSL's table, computed owner-side in simulation.

Both read an owner's *real* seen-class features (which no service ever sees), so they are
references, not competitors under the same rules: ESZSL (Romera-Paredes & Torr 2015) on real
seen features, and ridge regression from class semantics to the seen classes' real mean
(L2-normalised) features, then nearest mean by cosine. Their two regularisers are chosen on
``split=val`` (validation classes) and then applied to ``split=test``; so is their
calibrated stacking (a value subtracted from the seen classes' scores, in units of the
scores' standard deviation), as the DFZSL rows get theirs.
"""

from __future__ import annotations

import itertools

import numpy as np

from azsl_flower.common.metrics import harmonic
from azsl_flower.common.semantics import load_class_side
from azsl_flower.owner.data import OwnerData, load_owner_data

__all__ = ["GRID", "baselines", "eszsl", "ridge_prototypes", "score"]

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
CALIBRATION = tuple(round(0.1 * i, 1) for i in range(31))  # x the scores' std


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score(data: OwnerData, weights: np.ndarray, calibration: float = 0.0) -> dict[str, float]:
    """ZSL T1 (unseen classes only) and GZSL u, s, H of a linear scorer x @ W (C columns);
    ``calibration`` x the scores' std is subtracted from the seen classes' scores."""

    def per_class(pred: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))

    unseen = data.unseen_classes
    xs, xu = _l2(data.test_seen_x), _l2(data.test_unseen_x)
    su, ss = xu @ weights, xs @ weights
    zsl = per_class(unseen[su[:, unseen].argmax(1)], data.test_unseen_y)
    known = np.union1d(data.seen_classes, unseen)
    mask = np.full(weights.shape[1], -np.inf)
    mask[known] = 0.0
    mask[data.seen_classes] -= calibration * float(np.concatenate([su, ss])[:, known].std())
    u = per_class((su + mask).argmax(1), data.test_unseen_y)
    s = per_class((ss + mask).argmax(1), data.test_seen_y)
    return {"zsl": zsl, "u": u, "s": s, "h": harmonic(u, s)}


def eszsl(data: OwnerData, sem: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """ESZSL's closed form V = (X'X + gI)^-1 X'Y S (S'S + lI)^-1; scores x V S' (d x C)."""
    x, seen = _l2(data.train_x), data.seen_classes
    y = -np.ones((x.shape[0], seen.size))
    y[np.arange(x.shape[0]), np.searchsorted(seen, data.train_y)] = 1.0
    s = sem[seen].T  # A x Cs
    v = np.linalg.solve(x.T @ x + gamma * np.eye(x.shape[1]), x.T @ y @ s.T)
    v = v @ np.linalg.inv(s @ s.T + lam * np.eye(s.shape[0]))
    return v @ sem.T


def ridge_prototypes(data: OwnerData, sem: np.ndarray, lam: float) -> np.ndarray:
    """Seen classes: their real mean feature; unseen: ridge from semantics to those means."""
    x, seen = _l2(data.train_x), data.seen_classes
    means = _l2(np.stack([x[data.train_y == c].mean(0) for c in seen]))
    a = sem[seen]
    b = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ means)
    protos = _l2(sem @ b)
    protos[seen] = means
    return protos.T


def baselines(data_dir: str, feature_file: str, semantics: str = "att") -> dict[str, dict]:
    """Both baselines: regularisers picked by ZSL T1 on split=val, then scored on split=test."""
    sem = load_class_side("xlsa17", data_dir, semantics).semantics.astype(np.float64)
    load = {
        split: load_owner_data("xlsa17", data_dir, feature_file, "inductive", split=split)
        for split in ("val", "test")
    }
    out: dict[str, dict] = {}
    methods = {
        "eszsl": (lambda d, g: eszsl(d, sem, *g), list(itertools.product(GRID, GRID))),
        "ridge_prototypes": (lambda d, g: ridge_prototypes(d, sem, g[0]), [(g,) for g in GRID]),
    }
    for name, (fit, grid) in methods.items():
        val = {g: score(load["val"], fit(load["val"], g)) for g in grid}
        best = max(grid, key=lambda g: val[g]["zsl"])
        w_val, w_test = fit(load["val"], best), fit(load["test"], best)
        curve = {c: score(load["val"], w_val, c) for c in CALIBRATION}
        cal = max(CALIBRATION, key=lambda c: curve[c]["h"])
        out[name] = {
            "selected": list(best),
            "val": val[best],
            "test": score(load["test"], w_test),
            "calibration": cal,
            "val_calibrated": curve[cal],
            "test_calibrated": score(load["test"], w_test, cal),
        }
    return out
