"""Differential privacy at the owner, with Opacus: a DP-SGD teacher and Gaussian statistics.

Everything an owner answers about generated features is computed from two things learned
on its training images: the teacher and the regulariser's per-class statistics. Make both
differentially private and every answer (outputs, gradients, even the weights) is
post-processing: the guarantee holds however many queries the service sends.

- Teacher: Opacus DP-SGD (per-sample clipping, Gaussian noise, Poisson sampling) to a
  target (ε, δ).
- Statistics: released once with the Gaussian mechanism. Each record is clipped to L2
  norm C; the released vector is, per class, the count and the sum of features, and over
  all classes the per-dimension sum of squares, scaled so one record moves it by at most 1
  in L2 (add/remove adjacency). Means and a pooled within-class variance follow by
  post-processing.
- Composition: both go into one Opacus accountant (RDP); no privacy arithmetic here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "STATS_WEIGHTS",
    "Mechanism",
    "PrivacySpend",
    "gaussian_class_stats",
    "planned_teacher",
    "shrink_means",
    "stats_mechanism",
    "stats_noise_multiplier",
    "train_dp_teacher",
]

TEACHER_MECHANISM = "dp-sgd teacher (opacus)"  # its name in declarations and results

# Shares of the statistics' unit sensitivity: count, per-class sums (the means matter
# most to the regulariser and to any attacker), pooled sum of squares. Squares sum to 1.
STATS_WEIGHTS = (0.3, 0.85, math.sqrt(1 - 0.3**2 - 0.85**2))


@dataclass(frozen=True)
class Mechanism:
    """One DP release, as Opacus's accountant counts it: (noise multiplier, sample rate, steps)."""

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    detail: dict[str, Any] = field(default_factory=dict)

    def history(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def to_json(self, delta: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "epsilon_alone": epsilon_of([self], delta),
            **self.detail,
        }


def _accountant(mechanisms: list[Mechanism]):  # noqa: ANN202 - Opacus's type
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [m.history() for m in mechanisms]
    return acc


def epsilon_of(mechanisms: list[Mechanism], delta: float) -> float:
    """ε at ``delta`` of the mechanisms composed, by Opacus's RDP accountant."""
    if not mechanisms:
        return 0.0
    with warnings.catch_warnings():  # "optimal order is the largest alpha": a looser bound
        warnings.simplefilter("ignore", UserWarning)
        return float(_accountant(mechanisms).get_epsilon(delta))


@dataclass
class PrivacySpend:
    """What an owner released under DP and what it cost: declared at set-up, in results."""

    delta: float
    mechanisms: list[Mechanism]
    covered: bool  # every answer is post-processing of these mechanisms
    not_covered: list[str]  # what is released without a guarantee, when not covered
    # every DP release the owner has made, for any run (teachers and statistics over each
    # training set it was asked about): their composition is what the owner has spent
    lifetime: list[Mechanism] = field(default_factory=list)
    # the answers about generated features are covered, whatever evaluation's counts are
    # (exact counts on the test split are in ``not_covered`` and keep ``covered`` false)
    answers_covered: bool | None = None  # None: as ``covered``

    @property
    def epsilon(self) -> float | None:
        """Composed ε of what the answers are computed from, or None when one of those
        releases carries no guarantee (exact evaluation counts are declared beside it)."""
        answers = self.covered if self.answers_covered is None else self.answers_covered
        return epsilon_of(self.mechanisms, self.delta) if answers else None

    def to_json(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "accountant": "opacus.accountants.RDPAccountant",
            "mechanisms": [m.to_json(self.delta) for m in self.mechanisms],
            "covered": self.covered,
            "answers_covered": self.epsilon is not None,
            "not_covered": self.not_covered,
            "lifetime_releases": len(self.lifetime),
            "lifetime_epsilon": epsilon_of(self.lifetime, self.delta) if self.lifetime else 0.0,
        }


def train_dp_teacher(
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    delta: float,
    epochs: int,
    batch_size: int,
    max_grad_norm: float,
    lr: float,
    seed: int,
) -> Mechanism:
    """DP-SGD (Opacus, Poisson sampling, flat clipping) to (``epsilon``, ``delta``).

    Opacus picks the noise multiplier for the target from its accountant; the returned
    :class:`Mechanism` is exactly the accountant's history.
    """
    from opacus import PrivacyEngine

    n = int(x.shape[0])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=min(batch_size, n),
        generator=torch.Generator().manual_seed(seed),
    )
    # SGD with momentum, not Adam: Adam rescales every coordinate to unit size, and under
    # DP noise most coordinates carry noise only, which it would amplify
    opt = torch.optim.SGD(teacher.parameters(), lr=lr, momentum=0.9)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure_mode / RNG notices: simulation-grade noise
        model, opt, criterion, loader = engine.make_private_with_epsilon(
            module=teacher,
            optimizer=opt,
            criterion=nn.CrossEntropyLoss(),
            data_loader=loader,
            target_epsilon=epsilon,
            target_delta=delta,
            epochs=epochs,
            max_grad_norm=max_grad_norm,
            grad_sample_mode="ghost",  # per-sample norms without per-sample gradients
            noise_generator=torch.Generator(device=x.device).manual_seed(seed + 1),
        )
        model.train()
        for _ in range(epochs):
            for xb, yb in loader:
                if xb.shape[0] == 0:  # Poisson sampling can draw an empty batch
                    continue
                opt.zero_grad(set_to_none=True)
                loss = criterion(model(xb), yb)
                loss.backward()
                opt.step()
    steps = sum(s for _, _, s in engine.accountant.history)
    (noise, rate, _) = engine.accountant.history[0]
    model.remove_hooks()
    teacher.eval()
    return Mechanism(
        TEACHER_MECHANISM,
        float(noise),
        float(rate),
        int(steps),
        {
            "max_grad_norm": max_grad_norm,
            "epochs": epochs,
            "expected_batch": batch_size,
            "lr": lr,
            "optimizer": "sgd, momentum 0.9",
            "parameters": sum(p.numel() for p in teacher.parameters()),
        },
    )


def _opacus_noise(epsilon: float, delta: float, **schedule: Any) -> float:
    """The noise multiplier Opacus's RDP accountant gives for (ε, δ) over ``schedule``."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon, target_delta=delta, accountant="rdp", **schedule
            )
        )


def stats_noise_multiplier(epsilon: float, delta: float) -> float:
    """The Gaussian mechanism's noise multiplier for one release at (ε, δ), from Opacus."""
    return _opacus_noise(epsilon, delta, sample_rate=1.0, steps=1, epsilon_tolerance=0.005)


def gaussian_class_stats(
    x: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    shrink: bool = True,
) -> tuple[np.ndarray, np.ndarray, Mechanism]:
    """Per-class means and a pooled within-class variance, released with Gaussian noise.

    ``classes`` are the owner's declared classes (public). Returns (mean [C x D],
    variance [C x D], the mechanism). One record changes its class's count and sum and
    the pooled sum of squares; after clipping to ``clip`` and scaling by STATS_WEIGHTS the
    whole released vector moves by at most 1 in L2, so noise of std ``noise_multiplier``
    per coordinate is the Gaussian mechanism with that multiplier.

    ``shrink``: the means are then shrunk toward the pooled mean (positive-part
    James–Stein, :func:`shrink_means`): post-processing, free, and far closer to the real
    means when a class has few images and the noise dominates; off, they are unbiased.
    """
    w_count, w_sum, w_sq = STATS_WEIGHTS
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xc = x * np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    d = x.shape[1]
    idx = np.searchsorted(classes, y)
    counts = np.bincount(idx, minlength=classes.size).astype(np.float64)
    sums = np.zeros((classes.size, d))
    np.add.at(sums, idx, xc)
    sq = (xc.astype(np.float64) ** 2).sum(0)
    z = noise_multiplier
    n_hat = (w_count * counts + rng.normal(0, z, counts.shape)) / w_count
    s_hat = (w_sum * sums / clip + rng.normal(0, z, sums.shape)) * clip / w_sum
    q_hat = (w_sq * sq / clip**2 + rng.normal(0, z, sq.shape)) * clip**2 / w_sq
    # post-processing from here on: no further privacy cost
    n_hat = np.maximum(n_hat, 2.0)
    mean = s_hat / n_hat[:, None]
    # within-class variance pooled over classes; each noisy mean squared is biased up by
    # its noise variance (z clip / w_sum / n)^2, which is known and taken off
    mean_sd = z * clip / w_sum / n_hat  # the noise on each class mean, per coordinate
    bias = mean_sd**2
    between = (n_hat[:, None] * (mean**2 - bias[:, None])).sum(0)
    pooled = (q_hat - between) / n_hat.sum()
    floor = max(1e-2 * float(np.clip(pooled, 0, None).mean()), 1e-8)
    var = np.broadcast_to(np.maximum(pooled, floor), mean.shape).copy()
    if shrink:
        mean = shrink_means(mean, n_hat, mean_sd)
    return mean.astype(np.float32), var.astype(np.float32), stats_mechanism(z, clip)


def stats_mechanism(noise_multiplier: float, clip: float) -> Mechanism:
    """The statistics release as the accountant counts it: one Gaussian mechanism."""
    return Mechanism(
        "gaussian class statistics",
        float(noise_multiplier),
        1.0,
        1,
        {"clip": clip, "released": "per-class count and sum; pooled sum of squares"},
    )


def shrink_means(mean: np.ndarray, counts: np.ndarray, noise_sd: np.ndarray) -> np.ndarray:
    """Positive-part James–Stein: each noisy class mean (C x D) pulled toward the
    count-weighted pooled mean, by as much as its known noise (``noise_sd`` per coordinate,
    per class) outweighs its distance from it. Lowers the expected squared error of every
    class mean whatever the real means are (D >= 3); uses released values only."""
    pooled = (mean * counts[:, None]).sum(0) / counts.sum()
    dev = mean - pooled
    dist2 = np.maximum((dev**2).sum(1), 1e-12)
    keep = np.clip(1.0 - (mean.shape[1] - 2) * noise_sd**2 / dist2, 0.0, 1.0)
    return pooled + keep[:, None] * dev


def teacher_sgd_noise(epsilon: float, delta: float, n: int, batch_size: int, epochs: int) -> float:
    """The DP-SGD noise multiplier Opacus picks for these settings (for planning budgets)."""
    rate = 1.0 / math.ceil(n / min(batch_size, n))  # as Opacus samples
    return _opacus_noise(epsilon, delta, sample_rate=rate, epochs=epochs)


def planned_teacher(
    epsilon: float, delta: float, n: int, batch_size: int, epochs: int
) -> Mechanism:
    """The mechanism :func:`train_dp_teacher` will be, known before training (as Opacus
    plans it: sample rate 1 / batches, ``epochs`` x batches steps)."""
    batches = math.ceil(n / min(batch_size, n))
    sigma = teacher_sgd_noise(epsilon, delta, n, batch_size, epochs)
    return Mechanism(TEACHER_MECHANISM, sigma, 1.0 / batches, epochs * batches)
