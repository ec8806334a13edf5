"""Where generator feedback and verification answers come from: the owners over Flower, or
(scenario ``weights``) copies of their teachers that they sent at set-up.

Both sources answer the same two questions for the strategy, so its generator and
verification phases do not know which one they talk to:

- :meth:`feedback_round`: the (pool, answers by owner) pairs of one generator round, or
  None when no owner can answer any more;
- :meth:`verify`: the generated samples to verify and each verifier's softmax and
  log-sum-exp for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from logging import WARNING
from typing import Protocol

import numpy as np
import torch
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower.common.config import RunConfig
from azsl_flower.common.models import load_numpy_state, teacher_network, teacher_network_of
from azsl_flower.owner.oracle import FeedbackOracle
from azsl_flower.service.generator import GeneratorTrainer, Pool
from azsl_flower.service.local_regulariser import (
    LocalRegularisers,
    released_means,
    released_statistics,
)
from azsl_flower.service.local_regulariser import sent_regulariser as _sent_regulariser
from azsl_flower.wire import schema
from strategies.delivery import Delivery
from strategies.requests import Request
from strategies.roster import OwnerError

__all__ = ["FeedbackSource", "LocalTeachers", "RemoteOwners", "SourceSettings", "VerifyAnswers"]

Answers = dict[int, dict[str, np.ndarray]]  # node -> reply arrays
MAX_MESSAGE_BYTES = 2**30  # generated features per verification round trip


@dataclass(frozen=True)
class SourceSettings:
    """The run-config values a feedback source reads (built once by the strategy)."""

    rounds: int
    steps_per_round: int
    batch_size: int
    samples_per_class: int
    alpha: float
    regulariser: str  # the one scenario weights' owners sent the statistics of

    @classmethod
    def from_config(cls, cfg: RunConfig) -> SourceSettings:
        return cls(
            rounds=cfg.rounds,
            steps_per_round=cfg.steps_per_round,
            batch_size=cfg.batch_size,
            samples_per_class=cfg.samples_per_class,
            alpha=cfg.alpha,
            regulariser=cfg.regulariser,
        )


@dataclass
class VerifyAnswers:
    """Generated samples and, per verifier (in ``nodes`` order), its softmax and lse."""

    nodes: list[int]
    x: np.ndarray
    y: np.ndarray
    probs: list[np.ndarray]
    lse: list[np.ndarray] | None  # None: owners answer without logits (teacher-answer)


class FeedbackSource(Protocol):
    def feedback_round(
        self, trainer: GeneratorTrainer, r: int
    ) -> Iterable[tuple[Pool, Answers]] | None:
        """The round's (pool, answers) pairs, consumed one at a time; None: nobody can answer."""

    def verify(self, trainer: GeneratorTrainer, classes: np.ndarray) -> VerifyAnswers:
        """Generate ``samples-per-class`` of each class and collect the verifiers' answers."""

    def released_means(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The class means the owners sent at set-up (None: they sent none)."""

    def released_statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The class (means, variances, classes) the owners sent at set-up (None: none)."""


class Requests(Protocol):
    """The strategy's ``configure_*`` for the two requests a remote source sends."""

    def configure_feedback(self, pool: Pool, nodes: list[int], phase: str) -> Request: ...

    def configure_verify(self, x: np.ndarray, y: np.ndarray, nodes: list[int]) -> Request: ...


class RemoteOwners:
    """The owners over Flower: one round trip per pool of ``steps-per-round`` batches.

    ``local`` (``regulariser-answer=statistics``): the owners' regularisers rebuilt from
    the statistics they sent at set-up; each answer gets its owner's α∇ₓR added here, so the
    strategy combines them as it combines ``gradient`` answers."""

    def __init__(
        self,
        requests: Requests,
        delivery: Delivery,
        grid: Grid,
        settings: SourceSettings,
        verify_size: int,
        local: LocalRegularisers | None = None,
    ) -> None:
        self.requests, self.delivery, self.grid = requests, delivery, grid
        self.settings, self.verify_size, self.local = settings, verify_size, local

    def released_means(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.local is None else self.local.released_means()

    def released_statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        return None if self.local is None else self.local.released_statistics()

    def feedback_round(
        self, trainer: GeneratorTrainer, r: int
    ) -> list[tuple[Pool, Answers]] | None:
        cfg, roster = self.settings, self.delivery.roster
        pool_size = cfg.steps_per_round * cfg.batch_size
        asked = roster.with_budget(pool_size, "generator", reserve=self.verify_size)
        if not asked:
            log(
                WARNING,
                "no owner has query budget left for a pool of %d samples: the generator "
                "phase ends after %d of %d rounds",
                pool_size,
                r - 1,
                cfg.rounds,
            )
            return None
        classes = np.unique(np.concatenate([roster.covered[n] for n in asked]))
        pool = trainer.make_pool(cfg.steps_per_round, classes)
        request = self.requests.configure_feedback(pool, asked, f"generator-{r}")
        replies = self.delivery.ask(self.grid, request)
        answers = {n: a[0].arrays for n, a in replies.items()}
        if self.local is not None:  # checked as sent; the regulariser term is the service's
            answers = self.local.complete(answers, pool.x, pool.labels, pool.batch_size)
        return [(pool, answers)]

    def verify(self, trainer: GeneratorTrainer, classes: np.ndarray) -> VerifyAnswers:
        """Generate, then ask the owners with budget for all of it.

        Only classes those owners know are generated (the others would fail verification
        anyway). Chunks keep one message under protobuf's 2 GB limit; an owner must answer
        every chunk to count.
        """
        roster, spc = self.delivery.roster, self.settings.samples_per_class
        asked = roster.with_budget(spc * int(classes.size), "verification")
        if not asked:
            raise OwnerError(
                "no owner has query budget left for verification; lower rounds or "
                "samples-per-class, or raise query-budget in the owners' node config"
            )
        classes = np.intersect1d(classes, np.concatenate([roster.covered[n] for n in asked]))
        x, y = trainer.generate(classes, spc)
        probs: dict[int, list[np.ndarray]] = {n: [] for n in asked}
        lse: dict[int, list[np.ndarray]] = {n: [] for n in asked}
        for chunk in np.array_split(np.arange(y.size), -(-x.nbytes // MAX_MESSAGE_BYTES)):
            request = self.requests.configure_verify(x[chunk], y[chunk], list(asked))
            replies = self.delivery.ask(self.grid, request)
            for node in list(asked):
                if node in replies:
                    probs[node].append(replies[node][0].arrays["probs"])
                    if "lse" in replies[node][0].arrays:
                        lse[node].append(replies[node][0].arrays["lse"])
                else:  # failed, dropped or refused: its other chunks are of no use
                    asked.remove(node)
            if not asked:
                why = [f for f in roster.failures if f["phase"] == "verification"]
                raise OwnerError(
                    f"no owner answered verification: {why}; see the owners' logs, or raise "
                    "query-budget if they refused for budget"
                )
        with_lse = all(lse[n] for n in asked)
        return VerifyAnswers(
            asked,
            x,
            y,
            [np.concatenate(probs[n]) for n in asked],
            [np.concatenate(lse[n]) for n in asked] if with_lse else None,
        )


class LocalTeachers:
    """Scenario ``weights``: copies of the owners' teachers (and regulariser statistics) sent
    once at set-up; every generator update gets fresh feedback computed here, no message."""

    def __init__(
        self, oracles: dict[int, FeedbackOracle], settings: SourceSettings, lse_grad: bool
    ) -> None:
        self.oracles, self.settings, self.lse_grad = oracles, settings, lse_grad

    @classmethod
    def from_setup(
        cls,
        setup: dict[int, schema.Payload],
        num_classes: int,
        device: torch.device,
        settings: SourceSettings,
        lse_grad: bool,
    ) -> LocalTeachers:
        """Rebuild each owner's oracle from the weights and statistics it chose to send."""
        oracles = {}
        for node, r in setup.items():
            if r.weights is None:
                raise OwnerError("scenario=weights but an owner sent no teacher weights")
            covered = r.arrays["covered"]
            dim = int(r.scalars["dim"])
            kind = teacher_network_of(r.weights, dim, covered.size)
            teacher = teacher_network(kind, dim, covered.size)
            load_numpy_state(teacher, r.weights)
            reg = _sent_regulariser(settings.regulariser, r.arrays).to(device)
            oracles[node] = FeedbackOracle(
                teacher.to(device).eval(), covered, num_classes, reg, device
            )
        return cls(oracles, settings, lse_grad)

    def released_means(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The class means the owners sent with their teachers (averaged where several
        cover a class), or None when none sent statistics."""
        return released_means([o.regulariser for o in self.oracles.values()])

    def released_statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The class means and variances the owners sent with their teachers."""
        return released_statistics([o.regulariser for o in self.oracles.values()])

    def feedback_round(self, trainer: GeneratorTrainer, r: int) -> Iterator[tuple[Pool, Answers]]:
        """``steps-per-round`` one-batch pools, each answered on the current generator."""
        for _ in range(self.settings.steps_per_round):
            pool = trainer.make_pool(1)
            yield (
                pool,
                {
                    n: o.feedback(
                        pool.x,
                        pool.labels,
                        pool.batch_size,
                        True,
                        self.settings.alpha,
                        self.lse_grad,
                    )
                    for n, o in self.oracles.items()
                },
            )

    def verify(self, trainer: GeneratorTrainer, classes: np.ndarray) -> VerifyAnswers:
        x, y = trainer.generate(classes, self.settings.samples_per_class)
        nodes = list(self.oracles)
        answers = [self.oracles[n].probs_lse(x) for n in nodes]
        return VerifyAnswers(nodes, x, y, [a[0] for a in answers], [a[1] for a in answers])
