"""Xian et al. (2017) metrics from per-class counts, so owners never send predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClassCounts", "per_class_top1", "harmonic", "zsl_gzsl"]


@dataclass
class ClassCounts:
    """Correct/total per global class for one model on one owner's test split.

    ``gzsl_*`` come from predictions over the whole label space; ``zsl_correct`` from
    predictions restricted to the unseen classes (the inductive ZSL protocol).
    """

    seen_correct: np.ndarray
    seen_total: np.ndarray
    unseen_correct: np.ndarray
    unseen_total: np.ndarray
    zsl_correct: np.ndarray

    def __add__(self, other: ClassCounts) -> ClassCounts:
        return ClassCounts(
            *(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__)
        )


def per_class_top1(correct: np.ndarray, total: np.ndarray) -> float:
    """Mean over classes that have test samples of correct/total (0 if none)."""
    mask = np.asarray(total) > 0
    if not mask.any():
        return 0.0
    return float(np.mean(np.asarray(correct)[mask] / np.asarray(total)[mask]))


def harmonic(u: float, s: float) -> float:
    return 0.0 if u + s == 0 else 2 * u * s / (u + s)


def zsl_gzsl(counts: ClassCounts, zsl_label_space: str) -> dict[str, float]:
    """ZSL T1 on unseen classes, GZSL u, s and H.

    ``zsl_label_space='unseen'``: predictions restricted to unseen classes (inductive);
    ``'all'``: the whole label space (transductive, as the AZSL paper reports), i.e. T1 = u.
    """
    u = per_class_top1(counts.unseen_correct, counts.unseen_total)
    s = per_class_top1(counts.seen_correct, counts.seen_total)
    if zsl_label_space == "unseen":
        zsl = per_class_top1(counts.zsl_correct, counts.unseen_total)
    elif zsl_label_space == "all":
        zsl = u
    else:
        raise ValueError(f"zsl_label_space must be 'unseen' or 'all', not {zsl_label_space!r}")
    return {"zsl": zsl, "u": u, "s": s, "h": harmonic(u, s)}


def count_predictions(
    pred_all: np.ndarray,
    pred_zsl: np.ndarray | None,
    y: np.ndarray,
    is_unseen: bool,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (correct over all classes, total, correct restricted to unseen)."""
    total = np.bincount(y, minlength=num_classes)
    correct = np.bincount(y[pred_all == y], minlength=num_classes)
    zsl = np.zeros(num_classes, dtype=np.int64)
    if is_unseen and pred_zsl is not None:
        zsl = np.bincount(y[pred_zsl == y], minlength=num_classes)
    return correct, total, zsl
