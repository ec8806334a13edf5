"""Feedback math on generated features: the teacher's answers and the regulariser R.

Owners run it against their private teacher and statistics. The service runs it only in
the ``weights`` scenario, on teacher copies and statistics the owners chose to send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from azsl_flower.common.models import predict_logits
from azsl_flower.common.modes import REGULARISERS
from azsl_flower.common.regularisers import RegulariserKind, regulariser_kind

__all__ = [
    "REGULARISERS",
    "Regulariser",
    "KLRegulariser",
    "MMDRegulariser",
    "make_regulariser",
    "FeedbackOracle",
]


class Regulariser:
    """R(x̃ | y): distance between generated and the owner's real per-class distributions.

    This base is ``none`` (R = 0). A regulariser is a subclass with its ``name`` (its line
    in :data:`azsl_flower.common.regularisers.REGISTRY` says the rest: statistics, DP
    release), built by the owner from its data (:meth:`from_features`) and, where it has
    class statistics, sent as :meth:`stats` and rebuilt from them (:meth:`from_stats`) by
    the service in scenario ``weights`` and by the owner from its DP release."""

    name: ClassVar[str] = "none"

    @property
    def kind(self) -> RegulariserKind:
        """Its registry line: what the run config, the wire and the service know of it."""
        return regulariser_kind(self.name)

    @property
    def has_statistics(self) -> bool:
        return self.kind.has_statistics

    @property
    def reads_data(self) -> bool:
        return self.kind.reads_data

    @classmethod
    def from_features(cls, x: np.ndarray, y: np.ndarray, seed: int = 0) -> Regulariser:
        """Built by the owner from its training features and labels."""
        return cls()

    @classmethod
    def from_stats(cls, stats: dict[str, np.ndarray]) -> Regulariser:
        """Rebuilt from its class statistics (:meth:`stats`, or a DP release of them)."""
        raise ValueError(f"regulariser {cls.name!r} has no class statistics to rebuild it from")

    def stats(self) -> dict[str, np.ndarray]:
        """Its class statistics by name (the registry's ``statistics``; none here)."""
        return {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(())

    def to(self, device: torch.device) -> Regulariser:
        return self


class KLRegulariser(Regulariser):
    """Mean over classes in the batch of KL(N(gen) || N(real)), per-class diagonal Gaussians.

    Averaged over feature dimensions so alpha does not scale with the feature size.
    """

    name: ClassVar[str] = "kl"

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, classes: torch.Tensor) -> None:
        self.mean, self.var = mean, var
        self.index = {int(c): i for i, c in enumerate(classes.tolist())}

    @classmethod
    def from_features(cls, x: np.ndarray, y: np.ndarray, seed: int = 0) -> KLRegulariser:
        classes = np.unique(y)
        mean = np.stack([x[y == c].mean(0) for c in classes])
        var = np.stack([x[y == c].var(0) for c in classes])
        floor = 1e-2 * float(var.mean()) + 1e-8  # ReLU features: many near-constant dims
        return cls(
            torch.from_numpy(mean).float(),
            torch.from_numpy(np.maximum(var, floor)).float(),
            torch.from_numpy(classes),
        )

    @classmethod
    def from_stats(cls, stats: dict[str, np.ndarray]) -> KLRegulariser:
        return cls(
            torch.from_numpy(stats["mean"]),
            torch.from_numpy(stats["var"]),
            torch.from_numpy(stats["classes"]),
        )

    def stats(self) -> dict[str, np.ndarray]:
        classes = np.array(sorted(self.index, key=self.index.get), dtype=np.int64)
        return {"mean": self.mean.cpu().numpy(), "var": self.var.cpu().numpy(), "classes": classes}

    def to(self, device: torch.device) -> KLRegulariser:
        self.mean, self.var = self.mean.to(device), self.var.to(device)
        return self

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = []
        for c in torch.unique(y).tolist():
            i = self.index.get(int(c))
            xc = x[y == c]
            if i is None or xc.shape[0] < 2:
                continue
            m, v = xc.mean(0), xc.var(0, unbiased=False) + 1e-6
            mr, vr = self.mean[i], self.var[i]
            kl = 0.5 * (torch.log(vr / v) + (v + (m - mr) ** 2) / vr - 1.0)
            terms.append(kl.mean())
        return torch.stack(terms).mean() if terms else x.sum() * 0.0


class MMDRegulariser(Regulariser):
    """Per-class squared MMD with a sum of RBF kernels (bandwidths around the median distance)."""

    name: ClassVar[str] = "mmd"

    def __init__(self, x: np.ndarray, y: np.ndarray, per_class: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.real: dict[int, torch.Tensor] = {}
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            idx = rng.choice(idx, size=min(per_class, idx.size), replace=False)
            self.real[int(c)] = torch.from_numpy(x[idx]).float()
        sample = torch.cat(list(self.real.values()))[:512]
        d2 = torch.cdist(sample, sample).pow(2)
        self.scales = [float(d2[d2 > 0].median()) * f for f in (0.25, 1.0, 4.0)]

    @classmethod
    def from_features(cls, x: np.ndarray, y: np.ndarray, seed: int = 0) -> MMDRegulariser:
        return cls(x, y, seed=seed)

    def to(self, device: torch.device) -> MMDRegulariser:
        self.real = {c: r.to(device) for c, r in self.real.items()}
        return self

    def _k(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / s) for s in self.scales) / len(self.scales)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = []
        for c in torch.unique(y).tolist():
            r = self.real.get(int(c))
            g = x[y == c]
            if r is None or g.shape[0] < 2:
                continue
            terms.append(self._k(g, g).mean() + self._k(r, r).mean() - 2 * self._k(g, r).mean())
        return torch.stack(terms).mean() if terms else x.sum() * 0.0


def make_regulariser(name: str, x: np.ndarray, y: np.ndarray, seed: int = 0) -> Regulariser:
    """The registered regulariser ``name``, built from the owner's features and labels."""
    return regulariser_kind(name).load().from_features(x, y, seed=seed)


@dataclass
class FeedbackOracle:
    """Teacher + regulariser: answers feedback and verification queries on generated features.

    ``classes`` maps the teacher's outputs to global class ids. Used by the owner, and by
    the service only in the ``weights`` scenario (where the owner sent weights and stats).
    """

    teacher: nn.Module
    classes: np.ndarray
    num_classes: int
    regulariser: Regulariser
    device: torch.device

    def _global_probs(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.new_zeros(logits.shape[0], self.num_classes)
        probs[:, torch.as_tensor(self.classes, device=logits.device)] = logits.softmax(1)
        return probs

    def feedback(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        whitebox: bool,
        alpha: float,
        lse_grad: bool = False,
        regulariser: str = "gradient",
    ) -> dict[str, np.ndarray]:
        """Per batch: teacher softmax, CE and R values, and the gradient w.r.t. x̃.

        White-box: grad of CE(T(x̃), y) + alpha*R(x̃). Black-box: grad of alpha*R(x̃) only,
        which depends on the owner's feature statistics and never on the teacher.
        ``regulariser``: ``gradient`` as above; ``value``: R's value but no R in any
        gradient; ``none``: R is not computed. Without a gradient to give (black-box and
        not ``gradient``) the answer has no ``grad`` at all.
        Always also ``lse``, the log-sum-exp of the teacher's logits per sample (how
        strongly it claims x̃ for *some* of its classes), and with ``lse_grad`` in
        white-box its input gradient (same 1/batch scaling as CE): what the service
        needs for ``ensemble-weighting=joint``.
        """
        self.teacher.eval()
        local = np.full(self.num_classes, -1, dtype=np.int64)
        local[self.classes] = np.arange(self.classes.size)
        xs = torch.from_numpy(np.ascontiguousarray(x)).float().to(self.device)
        ys = torch.from_numpy(np.ascontiguousarray(y)).long().to(self.device)
        ys_local = torch.from_numpy(local[y]).to(self.device)
        probs, grads, ces, regs, lses, lse_grads = [], [], [], [], [], []
        for i in range(0, xs.shape[0], batch_size):
            xb = xs[i : i + batch_size].clone().requires_grad_(True)
            yb, yl = ys[i : i + batch_size], ys_local[i : i + batch_size]
            known = yl >= 0
            logits = self.teacher(xb)
            ce = (
                F.cross_entropy(logits[known], yl[known], reduction="sum") / xb.shape[0]
                if known.any()
                else xb.sum() * 0.0
            )
            if regulariser == "none":
                reg = xb.new_zeros(())
            elif regulariser == "value":
                with torch.no_grad():
                    reg = self.regulariser(xb.detach(), yb)
            else:
                reg = self.regulariser(xb, yb)
            lse = logits.logsumexp(1)
            if whitebox and lse_grad:
                (gl,) = torch.autograd.grad(lse.sum() / xb.shape[0], xb, retain_graph=True)
                lse_grads.append(gl.detach())
            g = None
            if whitebox:
                loss = ce + alpha * reg if reg.requires_grad else ce
                g = torch.autograd.grad(loss, xb)[0] if loss.requires_grad else None
                g = torch.zeros_like(xb) if g is None else g
            elif regulariser == "gradient":
                g = torch.autograd.grad(alpha * reg, xb)[0] if reg.requires_grad else None
                g = torch.zeros_like(xb) if g is None else g
            probs.append(self._global_probs(logits.detach()))
            if g is not None:
                grads.append(g.detach())
            ces.append(float(ce.detach()))
            regs.append(float(reg.detach()))
            lses.append(lse.detach())
        out = {
            "probs": torch.cat(probs).cpu().numpy().astype(np.float32),
            "ce": np.asarray(ces, dtype=np.float32),
            "reg": np.asarray(regs, dtype=np.float32),
            "lse": torch.cat(lses).cpu().numpy().astype(np.float32),
        }
        if grads:
            out["grad"] = torch.cat(grads).cpu().numpy().astype(np.float32)
        if lse_grads:
            out["grad_lse"] = torch.cat(lse_grads).cpu().numpy().astype(np.float32)
        return out

    @torch.no_grad()
    def probs_lse(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Teacher softmax in the global label space and log-sum-exp of its logits."""
        xs = torch.from_numpy(np.ascontiguousarray(x)).float().to(self.device)
        logits = predict_logits(self.teacher, xs)
        return (
            self._global_probs(logits).cpu().numpy(),
            logits.logsumexp(1).cpu().numpy().astype(np.float32),
        )

    def probs(self, x: np.ndarray) -> np.ndarray:
        return self.probs_lse(x)[0]
