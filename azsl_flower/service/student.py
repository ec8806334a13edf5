"""The student (Eq. 4) and, for an inductive teacher, classifier C (Eq. 7).

Both are trained on verified generated features only; neither ever sees a real one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from azsl_flower.common.config import RunConfig
from azsl_flower.common.models import classifier, fit

__all__ = [
    "EpochProgress",
    "StudentSettings",
    "train_classifier",
    "train_models",
    "train_student",
]

EpochProgress = Callable[[int, float], None]  # (epoch from 0, mean loss of the epoch)


@dataclass(frozen=True)
class StudentSettings:
    """The run-config keys student and classifier training read."""

    epochs: int
    lr: float
    seed: int

    @classmethod
    def from_config(cls, cfg: RunConfig) -> StudentSettings:
        return cls(epochs=cfg.student_epochs, lr=cfg.lr_student, seed=cfg.seed)


def _fit(
    model: nn.Module,
    x: np.ndarray,
    target: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    settings: StudentSettings,
    progress: EpochProgress | None,
) -> nn.Module:
    device = next(model.parameters()).device
    fit(
        model,
        torch.from_numpy(x).to(device),
        target.to(device),
        loss,
        epochs=settings.epochs,
        lr=settings.lr,
        seed=settings.seed,
        progress=progress,
    )
    return model


def _mse_of_softmax(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(logits.softmax(1), p, reduction="sum") / logits.shape[0]


def train_student(
    x: np.ndarray,
    probs: np.ndarray,
    settings: StudentSettings,
    device: torch.device,
    progress: EpochProgress | None = None,
) -> nn.Module:
    """Eq. 4: student S mimics the teachers' softmax (MSE) on verified generated features.

    ``progress(epoch, mean loss)`` after each epoch (TensorBoard's student curve)."""
    student = classifier(x.shape[1], probs.shape[1]).to(device)
    return _fit(student, x, torch.from_numpy(probs), _mse_of_softmax, settings, progress)


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    settings: StudentSettings,
    device: torch.device,
    progress: EpochProgress | None = None,
) -> nn.Module:
    """Eq. 7: classifier C over seen ∪ unseen, cross-entropy on generated features."""
    clf = classifier(x.shape[1], num_classes).to(device)
    return _fit(clf, x, torch.from_numpy(y).long(), F.cross_entropy, settings, progress)


def train_models(
    verified: tuple[np.ndarray, np.ndarray, np.ndarray],
    unseen: tuple[np.ndarray, np.ndarray] | None,
    num_classes: int,
    settings: StudentSettings,
    device: torch.device,
    on_epoch: Callable[[str, int, int, float], None],
) -> dict[str, nn.Module]:
    """The models a run evaluates, the one it reports first.

    ``verified``: (x, y, teachers' softmax) of the generated samples verification kept.
    ``unseen`` (inductive teacher): generated unseen-class samples; then classifier C over
    seen ∪ unseen comes first, the distilled student second. ``on_epoch(phase, epoch from 1,
    epochs, loss)``.
    """
    x, y, probs = verified
    total = settings.epochs
    student = train_student(
        x, probs, settings, device, lambda e, loss: on_epoch("student", e + 1, total, loss)
    )
    if unseen is None:
        return {"student": student}
    clf = train_classifier(
        np.concatenate([x, unseen[0]]),
        np.concatenate([y, unseen[1]]),
        num_classes,
        settings,
        device,
        lambda e, loss: on_epoch("classifier", e + 1, total, loss),
    )
    return {"classifier": clf, "student": student}
