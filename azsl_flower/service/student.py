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
    "gaussian_samples",
    "train_classifier",
    "train_models",
    "train_student",
    "train_student_kd",
]

EpochProgress = Callable[[int, float], None]  # (epoch from 0, mean loss of the epoch)


@dataclass(frozen=True)
class StudentSettings:
    """The run-config keys student and classifier training read."""

    epochs: int
    lr: float
    seed: int
    loss: str = "eq4"  # ce+kd: also the student-kd candidate
    temperature: float = 4.0
    gaussian_samples: int = 0  # per class, from released class Gaussians (student-kd only)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> StudentSettings:
        return cls(
            epochs=cfg.student_epochs,
            lr=cfg.lr_student,
            seed=cfg.seed,
            loss=cfg.student_loss,
            temperature=cfg.kd_temperature,
            gaussian_samples=cfg.student_gaussian_samples,
        )


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


def _ce_plus_kd(temperature: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """CE on the label + T²·KL(teacher_T ‖ student_T) where the row has teacher labels.

    The target row is [label, has teacher labels (0/1), the teachers' softmax]; softening
    the softmax p to p^(1/T) (renormalised) is the teacher's softmax at temperature T."""

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y, has = target[:, 0].long(), target[:, 1]
        ce = F.cross_entropy(logits, y)
        soft = (target[:, 2:].clamp_min(1e-12).log() / temperature).softmax(1)
        log_q = (logits / temperature).log_softmax(1)
        kl = (soft * (soft.clamp_min(1e-12).log() - log_q)).sum(1)
        kd = (kl * has).sum() / has.sum().clamp_min(1.0)
        return ce + temperature**2 * kd

    return loss


def gaussian_samples(
    means: np.ndarray, variances: np.ndarray, classes: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples per class from the released N(μ_c, diag σ²_c), labelled c (no round
    trip: what the owners released already). Unknown (NaN) variances count as 0."""
    rng = np.random.default_rng(seed)
    std = np.sqrt(np.nan_to_num(np.maximum(variances, 0.0)))
    x = means[:, None, :] + std[:, None, :] * rng.standard_normal((len(classes), n, means.shape[1]))
    return x.reshape(-1, means.shape[1]).astype(np.float32), np.repeat(classes, n).astype(np.int64)


def train_student_kd(
    x: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    settings: StudentSettings,
    device: torch.device,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    progress: EpochProgress | None = None,
) -> nn.Module:
    """The student-kd candidate: cross-entropy on the verified labels plus temperature-scaled
    KD on the teachers' soft labels, which keeps the labels' sharp signal where a flat (DP)
    teacher's softmax carries little. ``extra`` (x, y): samples with labels only (drawn from
    released Gaussians), trained with the CE term alone."""
    num_classes = probs.shape[1]
    rows = np.concatenate([y[:, None], np.ones((y.size, 1)), probs], 1)
    if extra is not None and extra[1].size:
        blank = np.zeros((extra[1].size, num_classes))
        rows = np.concatenate([rows, np.concatenate([extra[1][:, None], blank[:, :1], blank], 1)])
        x = np.concatenate([x, extra[0]])
    target = torch.from_numpy(rows.astype(np.float32))
    student = classifier(x.shape[1], num_classes).to(device)
    loss = _ce_plus_kd(settings.temperature)
    return _fit(student, np.ascontiguousarray(x, np.float32), target, loss, settings, progress)


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
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, nn.Module]:
    """The models a run evaluates, the one it reports first.

    ``verified``: (x, y, teachers' softmax) of the generated samples verification kept.
    ``unseen`` (inductive teacher): generated unseen-class samples; then classifier C over
    seen ∪ unseen comes first, the distilled student second. ``on_epoch(phase, epoch from 1,
    epochs, loss)``. ``student-loss=ce+kd`` adds the ``student-kd`` candidate after them,
    trained on the verified samples and ``extra`` (samples from released Gaussians).
    """
    x, y, probs = verified
    total = settings.epochs
    student = train_student(
        x, probs, settings, device, lambda e, loss: on_epoch("student", e + 1, total, loss)
    )
    out: dict[str, nn.Module] = {"student": student}
    if unseen is not None:
        clf = train_classifier(
            np.concatenate([x, unseen[0]]),
            np.concatenate([y, unseen[1]]),
            num_classes,
            settings,
            device,
            lambda e, loss: on_epoch("classifier", e + 1, total, loss),
        )
        out = {"classifier": clf, "student": student}
    if settings.loss == "ce+kd":
        out["student-kd"] = train_student_kd(
            x,
            y,
            probs,
            settings,
            device,
            extra,
            lambda e, loss: on_epoch("student-kd", e + 1, total, loss),
        )
    return out
