"""The AI service's learning side: generator, surrogate, student and classifier.

This module knows class names, semantic vectors and what owners *declared* (feature size,
class coverage). It has no loader for features: the only feature arrays it ever holds are
the ones its own generator produced. Communication lives in ``strategies/``; this module
turns owner answers into parameter updates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from azsl_flower.config import CHOICES, RunConfig
from azsl_flower.models import Generator, classifier, fit
from azsl_flower.semantics import ClassSide

__all__ = [
    "WEIGHTINGS",
    "Federation",
    "Pool",
    "Service",
    "combine_over_owners",
    "joint_gates",
    "joint_gradient",
    "owner_weights",
]


@dataclass
class Federation:
    """What the owners declared at set-up: feature size and class coverage."""

    dim: int
    num_classes: int
    covered: list[np.ndarray]  # per owner: global classes its teacher knows
    seen: np.ndarray
    unseen: np.ndarray

    @property
    def coverage(self) -> np.ndarray:
        """Owners x classes boolean matrix."""
        m = np.zeros((len(self.covered), self.num_classes), dtype=bool)
        for o, c in enumerate(self.covered):
            m[o, c] = True
        return m

    @property
    def trainable(self) -> np.ndarray:
        """Classes at least one teacher knows: the generator learns these from feedback."""
        return np.flatnonzero(self.coverage.any(0))


EpochProgress = Callable[[int, float], None]  # (epoch from 0, mean loss of the epoch)

WEIGHTINGS = CHOICES["ensemble-weighting"]  # how owners' answers about a sample combine


def joint_gates(lse: list[np.ndarray]) -> np.ndarray:
    """Owners x samples: softmax over owners of each teacher's log-sum-exp of logits.

    One softmax over *every* owner's logits, classes several owners cover adding their
    exp-logits, is p(k|x̃) = sum_o gate_o(x̃) p_o(k|x̃): each owner's own softmax, weighted by
    how strongly it claims x̃ (its logits' log-sum-exp). With class-disjoint owners this is
    exactly the softmax over the concatenated logits: an owner that never saw class y can
    still say "x̃ looks like one of *my* classes", which coverage weighting cannot hear.
    """
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in lse])
    e = np.exp(stacked - stacked.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def joint_gradient(
    grads: list[np.ndarray],
    grads_lse: list[np.ndarray] | None,
    probs: list[np.ndarray],
    lse: list[np.ndarray],
    coverage: np.ndarray,
    y: np.ndarray,
) -> np.ndarray:
    """Input gradient of -log p_joint(y|x̃) (+ alpha R) from one answer per owner.

    -log p(y) = log sum_o exp(lse_o) - log sum_{o covers y} exp(logit_oy), so its gradient
    is sum_o gate_o grad(lse_o) - sum_{o covers y} rho_o grad(logit_oy) with rho_o the
    covering owners' share of exp(logit_oy). Each owner sent grad(lse_o) and
    grad(CE_o + alpha R_o) = grad(lse_o) - grad(logit_oy) + alpha grad(R_o), so the sum
    is exact in one round trip; its R part is the covering owners' (rho-weighted).
    One covering owner and no other: its own gradient exactly. Black-box (no
    ``grads_lse``; owners' gradients are alpha grad(R_o) only): sum_o rho_o grad_o.
    """
    gates = joint_gates(lse)
    rows = np.arange(y.size)
    claim = np.stack([np.asarray(p, dtype=np.float32)[rows, y] for p in probs]) * gates
    claim = claim * coverage[:, y]
    denom = claim.sum(0)
    fallback = coverage[:, y].astype(np.float32)  # y's teachers all give it 0: split evenly
    fallback = fallback / np.maximum(fallback.sum(0), 1.0)
    rho = np.where(denom > 0, claim / np.where(denom > 0, denom, 1.0), fallback)
    out = np.zeros_like(grads[0], dtype=np.float32)
    for o in range(len(grads)):
        out += rho[o][:, None] * grads[o]
        if grads_lse is not None:
            out += (gates[o] - rho[o])[:, None] * grads_lse[o]
    return out


def owner_weights(
    coverage: np.ndarray,
    y: np.ndarray,
    mode: str = "coverage",
    probs: list[np.ndarray] | None = None,
    lse: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Owners x samples weights for combining the owners' answers about each sample.

    ``coverage``: owners whose teacher covers the sample's class, equally (an owner that
    never saw a class has nothing to say about it). ``uniform``: every answering owner
    equally, covering or not: the naive baseline, where an owner's softmax is zero on
    classes it never saw and so dilutes the others. ``confidence``: covering owners in
    proportion to their teacher's probability of the intended class y (``probs``: per
    owner, samples x classes in the global label space); coverage weights where all of
    them give it 0. ``joint``: :func:`joint_gates` (needs ``lse``, per owner its logits'
    log-sum-exp per sample), whatever y is. Columns sum to 1, except (coverage,
    confidence) for classes nobody covers, which get 0 everywhere.
    """
    n_owners = coverage.shape[0]
    if mode == "uniform":
        return np.full((n_owners, y.size), 1.0 / n_owners, dtype=np.float32)
    if mode == "joint":
        if lse is None or len(lse) != n_owners:
            raise ValueError("ensemble-weighting=joint needs every owner's log-sum-exp (lse)")
        return joint_gates(lse)
    w = coverage[:, y].astype(np.float32)  # owners x n
    if mode == "confidence":
        if probs is None or len(probs) != n_owners:
            raise ValueError("ensemble-weighting=confidence needs every owner's probabilities")
        rows = np.arange(y.size)
        conf = np.stack([np.asarray(p, dtype=np.float32)[rows, y] for p in probs])
        conf = np.clip(np.nan_to_num(conf), 0.0, None) * w
        w = np.where(conf.sum(0) > 0, conf, w)  # all covering owners at 0: fall back
    elif mode != "coverage":
        raise ValueError(f"unknown ensemble-weighting {mode!r}; choose one of {list(WEIGHTINGS)}")
    denom = w.sum(0)
    return np.divide(w, denom, out=np.zeros_like(w), where=denom > 0)


def combine_over_owners(
    per_owner: list[np.ndarray],
    coverage: np.ndarray,
    y: np.ndarray,
    probs: list[np.ndarray] | None = None,
    mode: str = "coverage",
    lse: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Combine per-sample answers (softmax, gradients...) of several owners into one.

    Weights come from :func:`owner_weights`. Under ``coverage`` and ``confidence`` a class
    covered by one owner gets that owner's answer exactly, and samples of a class nobody
    covers get zeros. Under ``joint``, softmaxes combine into the joint softmax; white-box
    gradients combine with :func:`joint_gradient` instead.
    """
    w = owner_weights(coverage, y, mode, probs, lse)
    out = np.zeros_like(per_owner[0], dtype=np.float32)
    for o, arr in enumerate(per_owner):
        out += w[o].reshape(-1, *([1] * (arr.ndim - 1))) * arr
    return out


@dataclass
class Pool:
    """Generated batches sent in one round trip; z and y let the service regenerate them."""

    y: list[torch.Tensor]
    z: list[torch.Tensor]
    x: np.ndarray
    batch_size: int

    @property
    def labels(self) -> np.ndarray:
        return torch.cat(self.y).cpu().numpy()


@dataclass
class Buffer:
    """Recent (generated feature, teacher probabilities) pairs for the black-box surrogate."""

    capacity: int
    x: list[torch.Tensor] = field(default_factory=list)
    p: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor, p: torch.Tensor) -> None:
        self.x.append(x)
        self.p.append(p)
        while sum(t.shape[0] for t in self.x) > self.capacity and len(self.x) > 1:
            self.x.pop(0)
            self.p.pop(0)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.x), torch.cat(self.p)


class Service:
    """Algorithm 1 of the AZSL paper, one round trip's worth of work at a time."""

    def __init__(
        self, cfg: RunConfig, classes: ClassSide, fed: Federation, device: torch.device
    ) -> None:
        if classes.num_classes != fed.num_classes:
            raise ValueError(
                f"the service knows {classes.num_classes} classes but owners declared "
                f"{fed.num_classes}; give both the same dataset"
            )
        self.cfg, self.fed, self.device = cfg, fed, device
        self.sem = torch.from_numpy(classes.semantics).to(device)
        torch.manual_seed(cfg.seed)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.generator = Generator(self.sem.shape[1], cfg.noise_dim, fed.dim).to(device)
        self.g_opt = torch.optim.Adam(
            self.generator.parameters(), lr=cfg.lr_generator, betas=(0.5, 0.999)
        )
        self.trainable = torch.from_numpy(fed.trainable)
        self.surrogate: nn.Module | None = None
        if cfg.scenario == "blackbox":
            self.surrogate = classifier(fed.dim, fed.num_classes, dropout=0.0).to(device)
            self.s_opt = torch.optim.Adam(self.surrogate.parameters(), lr=1e-3)
            self.buffer = Buffer(capacity=cfg.batch_size * cfg.steps_per_round * 8)
        self.history: list[dict[str, float]] = []

    # -- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything later generator rounds depend on (see :mod:`azsl_flower.checkpoint`)."""
        state: dict[str, Any] = {
            "generator": self.generator.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "rng": self.rng.get_state(),
        }
        if self.surrogate is not None:
            state |= {
                "surrogate": self.surrogate.state_dict(),
                "s_opt": self.s_opt.state_dict(),
                "buffer_x": [t.cpu() for t in self.buffer.x],
                "buffer_p": [t.cpu() for t in self.buffer.p],
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.generator.load_state_dict(state["generator"])
        except RuntimeError as exc:  # shapes: another dataset or noise dimension
            raise ValueError(f"the checkpoint's generator does not fit this run: {exc}") from None
        self.g_opt.load_state_dict(state["g_opt"])
        self.rng.set_state(state["rng"])
        if self.surrogate is not None:
            self.surrogate.load_state_dict(state["surrogate"])
            self.s_opt.load_state_dict(state["s_opt"])
            self.buffer.x = [t.to(self.device) for t in state["buffer_x"]]
            self.buffer.p = [t.to(self.device) for t in state["buffer_p"]]

    # -- generation ---------------------------------------------------------------------

    def _batch_labels(self, classes: torch.Tensor) -> torch.Tensor:
        """A batch covers few classes with several samples each, so per-class R is defined."""
        k = min(self.cfg.classes_per_batch, classes.numel())
        pick = classes[torch.randperm(classes.numel(), generator=self.rng)[:k]]
        reps = -(-self.cfg.batch_size // k)
        return pick.repeat_interleave(reps)[: self.cfg.batch_size]

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.noise_dim, generator=self.rng)

    def make_pool(self, n_batches: int, classes: np.ndarray | None = None) -> Pool:
        """``n_batches`` generated batches; ``classes``: only these (the owners asked this
        round know no others), default every class some owner knew at set-up."""
        pick = self.trainable if classes is None else torch.from_numpy(np.asarray(classes))
        if pick.numel() == 0:
            raise ValueError("make_pool needs at least one class to generate")
        ys = [self._batch_labels(pick.long()) for _ in range(n_batches)]
        zs = [self._noise(y.numel()) for y in ys]
        with torch.no_grad():
            xs = [self._generate(y, z) for y, z in zip(ys, zs, strict=True)]
        x = torch.cat(xs).cpu().numpy().astype(np.float32)
        return Pool(ys, zs, x, self.cfg.batch_size)

    def _generate(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.generator(self.sem[y.to(self.device)], z.to(self.device))

    @torch.no_grad()
    def generate(self, classes: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
        self.generator.eval()
        y = torch.from_numpy(np.repeat(classes, per_class)).long()
        xs = [
            self._generate(y[i : i + 4096], self._noise(min(4096, y.numel() - i)))
            for i in range(0, y.numel(), 4096)
        ]
        self.generator.train()
        return torch.cat(xs).cpu().numpy().astype(np.float32), y.numpy()

    # -- generator updates from feedback ---------------------------------------------------

    def apply_feedback(self, pool: Pool, probs: np.ndarray, grad: np.ndarray) -> dict[str, float]:
        """Use one round trip's answers for several generator updates.

        White-box: each batch is regenerated from its (z, y) with the current generator and
        the owners' input gradient is back-propagated into it (x̃.backward(g)); the gradient
        is a little stale after the first update, the price of few round trips.
        Black-box: the answers train a surrogate of the teachers; the generator learns
        through the surrogate (Eq. 5) plus the owners' regulariser gradient.
        """
        g_all = torch.from_numpy(grad).to(self.device)
        p_all = torch.from_numpy(probs).to(self.device)
        stats: dict[str, float] = {}
        if self.surrogate is not None:
            self.buffer.add(torch.from_numpy(pool.x).to(self.device), p_all)
            stats["surrogate_loss"] = self._train_surrogate()
        target = self._targets(torch.from_numpy(pool.x).to(self.device), g_all, pool.batch_size)
        b, losses = pool.batch_size, []
        order = [k for _ in range(self.cfg.pool_epochs) for k in range(len(pool.y))]
        for k in order:
            y, z = pool.y[k], pool.z[k]
            x = self._generate(y, z)
            # Move x̃ toward x̃0 - step * g (a descent step on the owners' loss taken in feature
            # space): unlike x̃.backward(g), a fixed target cannot be overshot however stale.
            loss = 0.5 * (x - target[k * b : k * b + y.numel()]).pow(2).sum(1).mean()
            if self.surrogate is not None:
                ce = F.cross_entropy(self.surrogate(x), y.to(self.device))
                loss = loss + ce
                losses.append(float(ce.detach()))
            self.g_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.g_opt.step()
        if losses:
            stats["surrogate_ce"] = float(np.mean(losses))
        return stats

    def _targets(self, x0: torch.Tensor, g: torch.Tensor, batch_size: int) -> torch.Tensor:
        """x̃0 - eta * |x̃0| * g / mean|g| per batch: a step whose size is relative to the data."""
        out = torch.empty_like(x0)
        for i in range(0, x0.shape[0], batch_size):
            gb, xb = g[i : i + batch_size], x0[i : i + batch_size]
            gnorm = gb.norm(dim=1).mean().clamp_min(1e-12)
            scale = self.cfg.feature_step * xb.norm(dim=1).mean().clamp_min(1e-6)
            out[i : i + batch_size] = xb - scale * gb / gnorm
        return out

    def _train_surrogate(self, steps: int | None = None) -> float:
        """Fit the surrogate to the teachers' soft labels on recently generated features."""
        assert self.surrogate is not None
        x, p = self.buffer.tensors()
        steps = steps or 4 * self.cfg.steps_per_round
        self.surrogate.train()
        last = 0.0
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (self.cfg.batch_size,), generator=self.rng)
            idx = idx.to(self.device)
            logp = F.log_softmax(self.surrogate(x[idx]), 1)
            loss = -(p[idx] * logp).sum(1).mean()
            self.s_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.s_opt.step()
            last = float(loss.detach())
        self.surrogate.eval()
        return last

    # -- student and classifier -----------------------------------------------------------

    def train_student(
        self, x: np.ndarray, probs: np.ndarray, progress: EpochProgress | None = None
    ) -> nn.Module:
        """Eq. 4: student S mimics the teachers' softmax (MSE) on verified generated features.

        ``progress(epoch, mean loss)`` after each epoch (TensorBoard's student curve)."""
        student = classifier(self.fed.dim, self.fed.num_classes).to(self.device)
        fit(
            student,
            torch.from_numpy(x).to(self.device),
            torch.from_numpy(probs).to(self.device),
            lambda logits, p: F.mse_loss(logits.softmax(1), p, reduction="sum") / logits.shape[0],
            epochs=self.cfg.student_epochs,
            lr=self.cfg.lr_student,
            seed=self.cfg.seed,
            progress=progress,
        )
        return student

    def train_classifier(
        self, x: np.ndarray, y: np.ndarray, progress: EpochProgress | None = None
    ) -> nn.Module:
        """Eq. 7: classifier C over seen ∪ unseen, cross-entropy on generated features."""
        clf = classifier(self.fed.dim, self.fed.num_classes).to(self.device)
        fit(
            clf,
            torch.from_numpy(x).to(self.device),
            torch.from_numpy(y).long().to(self.device),
            F.cross_entropy,
            epochs=self.cfg.student_epochs,
            lr=self.cfg.lr_student,
            seed=self.cfg.seed,
            progress=progress,
        )
        return clf
