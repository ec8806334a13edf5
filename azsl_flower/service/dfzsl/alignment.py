"""Alignment: class semantics mapped onto the virtual class directions.

DFZSL aligns CLIP's image and text sides (FLPT: tuned context tokens plus an image-side
offset). Here the two sides share no space (EfficientNet features, MiniLM class-name
vectors), so the analogue that fits is a map from semantics to directions, learned on the
seen classes' recovered directions and applied to every class: ridge regression, judged by
its cosine misfit ``1 - cos(predicted, recovered)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RidgeAlignment", "cosine_misfit"]


def cosine_misfit(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean 1 - cos between matching rows: the alignment's loss."""
    p = predicted / np.maximum(np.linalg.norm(predicted, axis=1, keepdims=True), 1e-12)
    t = target / np.maximum(np.linalg.norm(target, axis=1, keepdims=True), 1e-12)
    return float(np.mean(1.0 - np.sum(p * t, axis=1)))


class RidgeAlignment:
    """Semantics (C x A) -> unit directions (C x d): ridge regression on the seen classes."""

    def __init__(self, ridge: float) -> None:
        if not (np.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"alignment ridge={ridge!r}: a finite number >= 0")
        self.ridge = float(ridge)
        self.weights: np.ndarray | None = None

    def fit(self, semantics: np.ndarray, directions: np.ndarray) -> float:
        """Fit on the seen classes' (semantics, recovered directions); the fit's misfit."""
        s = np.asarray(semantics, dtype=np.float64)
        t = np.asarray(directions, dtype=np.float64)
        if s.ndim != 2 or t.ndim != 2 or s.shape[0] != t.shape[0] or s.shape[0] < 2:
            raise ValueError(f"alignment needs >= 2 seen classes: semantics {s.shape}, {t.shape}")
        eye = np.eye(s.shape[1])
        self.weights = np.linalg.solve(s.T @ s + self.ridge * eye + 1e-9 * eye, s.T @ t)
        return cosine_misfit(self.predict(semantics), directions)

    def predict(self, semantics: np.ndarray) -> np.ndarray:
        """Unit directions for any classes' semantics."""
        if self.weights is None:
            raise RuntimeError("fit the alignment on the seen classes first")
        w = np.asarray(semantics, dtype=np.float64) @ self.weights
        return (w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)).astype(np.float32)
