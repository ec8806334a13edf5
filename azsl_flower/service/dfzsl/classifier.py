"""The GZSL classifier: cosine softmax over seen and unseen classes, on virtual features.

Its weights start at the class directions (recovered for seen classes, aligned for unseen
ones), as DFZSL's start at the text features. Seen-bias is corrected at prediction by
calibrated stacking (run-config ``calibration``, chosen on ``split=val``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from azsl_flower.common.models import CosineClassifier, fit

__all__ = ["CLASSIFIER_TEMPERATURE", "cosine_prototypes", "train_cosine_classifier"]

CLASSIFIER_TEMPERATURE = 0.05


def cosine_prototypes(directions: np.ndarray) -> CosineClassifier:
    """A classifier that is just the directions (nearest direction by cosine): untrained."""
    model = CosineClassifier(directions.shape[1], directions.shape[0], CLASSIFIER_TEMPERATURE)
    model.weight.data.copy_(torch.from_numpy(np.asarray(directions, dtype=np.float32)))
    return model.eval()


def train_cosine_classifier(
    x: np.ndarray,
    y: np.ndarray,
    init: np.ndarray,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> CosineClassifier:
    """Cross-entropy on (virtual or generated) features, weights initialised at ``init``."""
    model = cosine_prototypes(init).to(device)
    fit(
        model,
        F.normalize(torch.from_numpy(x).float(), dim=1).to(device),
        torch.from_numpy(y).long().to(device),
        F.cross_entropy,
        epochs=epochs,
        lr=lr,
        seed=seed,
    )
    return model.eval()
