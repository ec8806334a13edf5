"""The regulariser term computed at the service, from class statistics the owners sent once.

With ``regulariser-answer=statistics`` each owner sends its regulariser's class statistics
in its set-up reply (exact, or its ``stats-epsilon`` release) and no regulariser in any
feedback reply. The service rebuilds each owner's regulariser from them (as scenario
``weights`` does) and adds α∇ₓR to that owner's answer before the owners' answers are
combined, so the generator's update is the ``gradient`` mode's (up to float error): the
same per-batch R, the same α, the same combination over owners. The distribution term then
costs no round trip; round trips are spent only on what needs the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from azsl_flower.common.config import RunConfig, Scenario
from azsl_flower.common.modes import sends_statistics
from azsl_flower.common.regularisers import regulariser_kind
from azsl_flower.owner.oracle import Regulariser
from azsl_flower.wire import schema

__all__ = [
    "LocalRegularisers",
    "local_regularisers",
    "released_means",
    "released_statistics",
    "sent_regulariser",
    "statistics_asked",
]

Answers = dict[int, dict[str, np.ndarray]]  # node -> reply arrays


def sent_regulariser(name: str, arrays: Mapping[str, np.ndarray]) -> Regulariser:
    """The run's regulariser rebuilt from the statistics an owner sent at set-up (its
    ``reg_<name>`` arrays); R = 0 where it sent none (``regulariser-answer=none``)."""
    kind = regulariser_kind(name)
    wire = {stat: f"reg_{stat}" for stat, _, _ in kind.statistics}
    if not wire or not all(key in arrays for key in wire.values()):
        return Regulariser()
    return kind.load().from_stats({stat: arrays[key] for stat, key in wire.items()})


def released_means(
    regularisers: list[Regulariser],
) -> tuple[np.ndarray, np.ndarray] | None:
    """The class means among the regularisers' statistics (averaged where several owners
    cover a class), and their classes; None when none has means (the NCM-released baseline)."""
    stats = released_statistics(regularisers)
    return None if stats is None else (stats[0], stats[2])


def released_statistics(
    regularisers: list[Regulariser],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(means, variances, classes) among the regularisers' statistics, each averaged over
    the owners that cover a class; variances NaN where a regulariser sent none. None when
    none has means. What the LDA-released candidate is built from."""
    sums: dict[int, list[np.ndarray]] = {}
    vars_: dict[int, list[np.ndarray]] = {}
    for reg in regularisers:
        s = reg.stats()
        if "mean" in s and "classes" in s:
            var = s.get("var", np.full_like(s["mean"], np.nan))
            for c, m, v in zip(s["classes"], s["mean"], var, strict=True):
                sums.setdefault(int(c), []).append(m)
                vars_.setdefault(int(c), []).append(v)
    if not sums:
        return None
    classes = np.array(sorted(sums))
    means = np.stack([np.mean(sums[c], 0) for c in classes])
    return means, np.stack([np.mean(vars_[c], 0) for c in classes]), classes


@dataclass
class LocalRegularisers:
    """Each owner's regulariser, rebuilt from its set-up statistics, and the run's α."""

    regularisers: dict[int, Regulariser]
    alpha: float
    device: torch.device

    @classmethod
    def from_setup(
        cls,
        name: str,
        setup: Mapping[int, schema.Payload],
        alpha: float,
        device: torch.device,
    ) -> LocalRegularisers:
        """One regulariser per owner from the ``reg_*`` arrays of its set-up reply (checked:
        :func:`strategies.checks.check_setup` with ``statistics``)."""
        regs = {n: sent_regulariser(name, r.arrays).to(device) for n, r in setup.items()}
        return cls(regs, alpha, device)

    def answer(
        self, node: int, x: np.ndarray, y: np.ndarray, batch_size: int
    ) -> dict[str, np.ndarray]:
        """What a ``gradient`` owner would add for its regulariser: per batch of
        ``batch_size``, ∇ₓ[α·R(x̃_b | y_b)] (``grad``) and R (``reg``), computed as the owner's
        :meth:`~azsl_flower.owner.oracle.FeedbackOracle.feedback` computes them."""
        reg = self.regularisers[node]
        xs = torch.from_numpy(np.ascontiguousarray(x)).float().to(self.device)
        ys = torch.from_numpy(np.ascontiguousarray(y)).long().to(self.device)
        grads, values = [], []
        for i in range(0, xs.shape[0], batch_size):
            xb = xs[i : i + batch_size].clone().requires_grad_(True)
            r = reg(xb, ys[i : i + batch_size])
            g = torch.autograd.grad(self.alpha * r, xb)[0] if r.requires_grad else None
            grads.append(torch.zeros_like(xb) if g is None else g.detach())
            values.append(float(r.detach()))
        return {
            "grad": torch.cat(grads).cpu().numpy().astype(np.float32),
            "reg": np.asarray(values, dtype=np.float32),
        }

    def complete(self, answers: Answers, x: np.ndarray, y: np.ndarray, batch_size: int) -> Answers:
        """The owners' feedback on one pool with each one's regulariser term added to its
        own answer (its gradient, or the gradient itself in black-box; its ``reg``), so the
        answers combine over owners exactly as ``gradient`` answers do."""
        out: Answers = {}
        for node, arrays in answers.items():
            if node not in self.regularisers:
                out[node] = arrays
                continue
            local = self.answer(node, x, y, batch_size)
            done = dict(arrays, reg=local["reg"])
            done["grad"] = arrays["grad"] + local["grad"] if "grad" in arrays else local["grad"]
            out[node] = done
        return out

    def released_means(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The class means the owners sent (see :func:`released_means`)."""
        return released_means(list(self.regularisers.values()))

    def released_statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The class means and variances the owners sent (see :func:`released_statistics`)."""
        return released_statistics(list(self.regularisers.values()))


def statistics_asked(cfg: RunConfig) -> str:
    """The regulariser whose class statistics every owner must send at set-up because the
    run asks ``regulariser-answer=statistics`` ("" when it does not, or R has none)."""
    answer, scenario = cfg.regulariser_answer, str(cfg.scenario)
    if answer != "statistics" or not sends_statistics(answer, scenario):
        return ""
    return cfg.regulariser if regulariser_kind(cfg.regulariser).has_statistics else ""


def local_regularisers(
    cfg: RunConfig, setup: Mapping[int, schema.Payload], device: torch.device
) -> LocalRegularisers | None:
    """The owners' regularisers for the service to compute R from (a remote run with
    ``regulariser-answer=statistics``); None otherwise (the owners compute it, or scenario
    ``weights``, whose local teachers hold it)."""
    if cfg.scenario is Scenario.WEIGHTS or not statistics_asked(cfg):
        return None
    return LocalRegularisers.from_setup(cfg.regulariser, setup, cfg.alpha, device)
