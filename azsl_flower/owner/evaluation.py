"""Federated evaluation at the owner: per-class counts of a model on its local test split.

The service sends a model; the owner scores it (and its own teacher) on its private test
features and returns per-class correct/total counts only, never predictions per sample.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from azsl_flower.common.metrics import count_predictions
from azsl_flower.common.models import (
    CosineClassifier,
    classifier,
    load_numpy_state,
    predict_logits,
)
from azsl_flower.owner.data import OwnerData
from azsl_flower.owner.oracle import FeedbackOracle

__all__ = ["class_counts", "evaluate_model", "leave_out_small_classes", "model_from_weights"]


def evaluate_model(
    model: nn.Module | None,
    data: OwnerData,
    unseen: np.ndarray,
    device: torch.device,
    oracle: FeedbackOracle | None = None,
    calibration: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-class counts of a global-label-space model (or of the teacher if model is None).

    ``calibration`` (model only; calibrated stacking, Chao et al. 2016): the first value is
    subtracted from the seen classes' logits (log-probabilities up to a per-sample
    constant) before the GZSL argmax; with more values, ``{seen,unseen}_curve`` hold the
    correct counts for each (one row each). Logits, not probabilities: a confident model
    puts ~1.0 on a seen class, and no shift of at most 1 in probability can move it.
    """
    gammas = np.zeros(1)
    if model is not None and calibration is not None and np.asarray(calibration).size:
        gammas = np.asarray(calibration, dtype=np.float64)
    seen_mask = np.ones(data.num_classes, dtype=bool)
    seen_mask[unseen] = False
    out: dict[str, np.ndarray] = {}
    for split, x, y, is_unseen in (
        ("seen", data.test_seen_x, data.test_seen_y, False),
        ("unseen", data.test_unseen_x, data.test_unseen_y, True),
    ):
        if model is not None:
            with torch.no_grad():
                scores = predict_logits(model, torch.from_numpy(x).to(device)).cpu().numpy()
        else:
            assert oracle is not None
            scores = oracle.probs(x) if x.shape[0] else np.zeros((0, data.num_classes))
            uncovered = np.setdiff1d(np.arange(data.num_classes), oracle.classes)
            scores[:, uncovered] = -np.inf
        pred_zsl = None
        if is_unseen and unseen.size and x.shape[0]:
            pred_zsl = unseen[scores[:, unseen].argmax(1)]
        counted = []  # (correct, total, zsl) per calibration value
        for gamma in gammas:
            shifted = scores - gamma * seen_mask if gamma else scores
            pred_all = shifted.argmax(1) if x.shape[0] else np.zeros(0, dtype=np.int64)
            counted.append(count_predictions(pred_all, pred_zsl, y, is_unseen, data.num_classes))
        correct, total, zsl = counted[0]
        out[f"{split}_correct"], out[f"{split}_total"] = correct, total
        if is_unseen:
            out["zsl_correct"] = zsl
        if gammas.size > 1:
            out[f"{split}_curve"] = np.stack([c[0] for c in counted])
    return out


def model_from_weights(weights: dict[str, np.ndarray], device: torch.device) -> nn.Module:
    """Rebuild a classifier MLP, or a cosine classifier (DFZSL), from its weights (shapes
    give the sizes)."""
    if set(weights) == {"weight", "temperature"}:
        w, t = weights["weight"], np.asarray(weights["temperature"]).ravel()
        if w.ndim != 2 or t.size != 1:
            raise ValueError(f"cosine classifier weights: weight {w.shape}, temperature {t.shape}")
        model = CosineClassifier(int(w.shape[1]), int(w.shape[0]), float(t[0]))
        return load_numpy_state(model, weights).to(device).eval()
    in_dim = int(weights["0.weight"].shape[1])
    out_dim = int(weights["6.weight"].shape[0])
    return load_numpy_state(classifier(in_dim, out_dim), weights).to(device).eval()


def class_counts(y: np.ndarray, num_classes: int, min_count: int = 0) -> np.ndarray:
    """Test samples per class, 0 for a class with fewer than ``min_count`` (left out)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes).astype(np.int64)
    if min_count:
        counts[counts < min_count] = 0
    return counts


def leave_out_small_classes(counts: dict[str, np.ndarray], min_count: int) -> dict[str, np.ndarray]:
    """Zero every count of a class with fewer than ``min_count`` test samples (node-config
    ``min-class-count``): counts over one or two samples would tell about those samples."""
    if not min_count:
        return counts
    out = {k: np.array(v, copy=True) for k, v in counts.items()}
    for split in ("seen", "unseen"):
        small = out[f"{split}_total"] < min_count
        for name in (f"{split}_correct", f"{split}_total") + (
            ("zsl_correct",) if split == "unseen" else ()
        ):
            out[name][small] = 0
        if f"{split}_curve" in out:
            out[f"{split}_curve"][:, small] = 0
    return out
