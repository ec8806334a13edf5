"""The service's generator G(z|a): pools of generated batches, and updates from feedback.

This module knows semantic vectors and what owners *declared* (feature size, class
coverage). It has no loader for features: the only feature arrays it ever holds are the
ones its own generator produced. Communication lives in ``strategies/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from azsl_flower.common.config import RunConfig, Scenario
from azsl_flower.common.models import Generator, classifier
from azsl_flower.service.ensemble import Declarations

__all__ = ["Buffer", "GeneratorSettings", "GeneratorTrainer", "Pool"]


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


@dataclass(frozen=True)
class GeneratorSettings:
    """The run-config keys the generator phase reads, and nothing else."""

    noise_dim: int
    batch_size: int
    classes_per_batch: int
    steps_per_round: int
    pool_epochs: int
    lr_generator: float
    feature_step: float
    seed: int
    surrogate: bool  # black-box: learn through a surrogate of the teachers

    @classmethod
    def from_config(cls, cfg: RunConfig) -> GeneratorSettings:
        return cls(
            noise_dim=cfg.noise_dim,
            batch_size=cfg.batch_size,
            classes_per_batch=cfg.classes_per_batch,
            steps_per_round=cfg.steps_per_round,
            pool_epochs=cfg.pool_epochs,
            lr_generator=cfg.lr_generator,
            feature_step=cfg.feature_step,
            seed=cfg.seed,
            surrogate=cfg.scenario is Scenario.BLACKBOX,
        )


class GeneratorTrainer:
    """G(z|a) and, black-box, the surrogate it learns through: Algorithm 1's generator
    updates, one round trip's answers at a time."""

    def __init__(
        self,
        settings: GeneratorSettings,
        semantics: np.ndarray,
        declared: Declarations,
        device: torch.device,
    ) -> None:
        if semantics.shape[0] != declared.num_classes:
            raise ValueError(
                f"the service knows {semantics.shape[0]} classes but owners declared "
                f"{declared.num_classes}; give both the same dataset"
            )
        self.settings, self.device = settings, device
        self.sem = torch.from_numpy(semantics).to(device)
        torch.manual_seed(settings.seed)
        self.rng = torch.Generator().manual_seed(settings.seed)
        self.generator = Generator(self.sem.shape[1], settings.noise_dim, declared.dim).to(device)
        self.g_opt = torch.optim.Adam(
            self.generator.parameters(), lr=settings.lr_generator, betas=(0.5, 0.999)
        )
        self.trainable = torch.from_numpy(declared.trainable)
        self.surrogate: nn.Module | None = None
        if settings.surrogate:
            self.surrogate = classifier(declared.dim, declared.num_classes, dropout=0.0).to(device)
            self.s_opt = torch.optim.Adam(self.surrogate.parameters(), lr=1e-3)
            self.buffer = Buffer(capacity=settings.batch_size * settings.steps_per_round * 8)

    # -- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything later generator rounds depend on (what a checkpoint saves)."""
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
        k = min(self.settings.classes_per_batch, classes.numel())
        pick = classes[torch.randperm(classes.numel(), generator=self.rng)[:k]]
        reps = -(-self.settings.batch_size // k)
        return pick.repeat_interleave(reps)[: self.settings.batch_size]

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.settings.noise_dim, generator=self.rng)

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
        return Pool(ys, zs, x, self.settings.batch_size)

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

    def apply_feedback(
        self, pool: Pool, probs: np.ndarray, grad: np.ndarray | None
    ) -> dict[str, float]:
        """Use one round trip's answers for several generator updates.

        White-box: each batch is regenerated from its (z, y) with the current generator and
        the owners' input gradient is back-propagated into it (x̃.backward(g)); the gradient
        is a little stale after the first update, the price of few round trips.
        Black-box: the answers train a surrogate of the teachers; the generator learns
        through the surrogate (Eq. 5) plus the owners' regulariser gradient, when they send
        one (``grad`` None: a strict black-box, outputs only; the generator then stays
        near this pool's features while the surrogate pulls it towards class y).
        """
        p_all = torch.from_numpy(probs).to(self.device)
        stats: dict[str, float] = {}
        if self.surrogate is not None:
            self.buffer.add(torch.from_numpy(pool.x).to(self.device), p_all)
            stats["surrogate_loss"] = self._train_surrogate()
        x0 = torch.from_numpy(pool.x).to(self.device)
        if grad is not None:
            target = self._targets(x0, torch.from_numpy(grad).to(self.device), pool.batch_size)
        else:
            # strict black-box: no step from the owners, but stay near the features they just
            # answered about (a trust region): the surrogate knows the teachers only there,
            # and unanchored the generator runs off to far, easily classified features that
            # teach the student nothing about real ones (Caltech-101 H 0.04 -> 0.14, short runs)
            target = x0
        b, losses = pool.batch_size, []
        order = [k for _ in range(self.settings.pool_epochs) for k in range(len(pool.y))]
        for k in order:
            y, z = pool.y[k], pool.z[k]
            x = self._generate(y, z)
            # Move x̃ toward x̃0 - step * g (a descent step on the owners' loss taken in
            # feature space): unlike x̃.backward(g), a fixed target is never overshot.
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
            scale = self.settings.feature_step * xb.norm(dim=1).mean().clamp_min(1e-6)
            out[i : i + batch_size] = xb - scale * gb / gnorm
        return out

    def _train_surrogate(self, steps: int | None = None) -> float:
        """Fit the surrogate to the teachers' soft labels on recently generated features."""
        assert self.surrogate is not None
        x, p = self.buffer.tensors()
        steps = steps or 4 * self.settings.steps_per_round
        self.surrogate.train()
        last = 0.0
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (self.settings.batch_size,), generator=self.rng)
            idx = idx.to(self.device)
            logp = F.log_softmax(self.surrogate(x[idx]), 1)
            loss = -(p[idx] * logp).sum(1).mean()
            self.s_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.s_opt.step()
            last = float(loss.detach())
        self.surrogate.eval()
        return last
