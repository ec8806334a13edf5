"""Who is in the run: live owners, quorum, failures, drops and query budgets.

The roster decides; it sends nothing. It is told each owner's outcome of a round trip and
answers which owners to re-send to; it drops an owner that keeps failing and fails the run
(:class:`OwnerError`, naming who and why) once fewer than ``quorum`` of the owners present
at set-up are left. It plans query budgets: who can take a request of a given size.
"""

from __future__ import annotations

import math
from logging import WARNING

import numpy as np
from flwr.common.logger import log

from azsl_flower.service.ensemble import Declarations
from azsl_flower.service.results import FederationReport

__all__ = ["OwnerError", "Roster"]


class OwnerError(RuntimeError):
    """Too few owners left in the run (failures, time-outs, rejections): names who and why."""


class Roster:
    """The owners of one run and what happened to each."""

    def __init__(self, quorum: float) -> None:
        self.quorum = quorum
        self.live: list[int] = []  # owners still in the run
        self.required = 1  # owners the run needs (quorum x owners that passed set-up)
        self.at_setup = 0
        self._settled = False
        self.covered: dict[int, np.ndarray] = {}  # node -> classes its teacher knows
        # node -> (test samples per class, seen split and unseen split) it declared
        self.test_counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.initial_classes = np.zeros(0, dtype=np.int64)  # classes some owner knew at set-up
        self.seen = np.zeros(0, dtype=np.int64)
        self.unseen = np.zeros(0, dtype=np.int64)
        self.dim = 0
        self.num_classes = 0
        self.failures: list[dict[str, object]] = []  # {node, phase, kind, reason}
        self.dropped: list[dict[str, object]] = []  # {node, phase, reason}
        self.generator_answers: dict[int, int] = {}  # node -> generator round trips answered
        # query budgets (generated samples per run; 0 = unlimited), declared at set-up
        self.budget: dict[int, int] = {}
        self.used: dict[int, int] = {}  # samples each owner answered (or may have)
        self.skipped: dict[int, dict[str, int]] = {}  # node -> phase -> round trips skipped

    # -- membership -------------------------------------------------------------------------

    def start(self, nodes: list[int]) -> None:
        """The nodes connected at set-up; quorum waits until set-up has sorted them out."""
        if not nodes:
            raise OwnerError("no data owner (SuperNode) is connected")
        self.live = sorted(nodes)
        self.at_setup = len(self.live)
        self.required = 0  # no quorum while set-up runs: strangers are dropped there
        self._settled = False

    def settle(self) -> None:
        """Set-up is over: quorum counts the owners that passed it, not every node that was
        online (a registered node without an allow-listed key is not one of our owners)."""
        if not self.live:
            raise OwnerError(self._quorum_message("setup"))
        self.at_setup = len(self.live)
        # 1e-9: 0.5 x 4 owners needs 2, not 3
        self.required = max(1, math.ceil(self.quorum * self.at_setup - 1e-9))
        self._settled = True

    def admit(
        self,
        covered: dict[int, np.ndarray],
        budgets: dict[int, int],
        seen: np.ndarray,
        unseen: np.ndarray,
        dim: int,
        num_classes: int,
        test_counts: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> Declarations:
        """Record what the owners that passed set-up declared; quorum counts them."""
        self.settle()
        self.covered, self.budget = dict(covered), dict(budgets)
        self.test_counts = dict(test_counts or {})
        self.used = dict.fromkeys(covered, 0)
        self.initial_classes = np.unique(np.concatenate(list(covered.values())))
        self.seen, self.unseen, self.dim, self.num_classes = seen, unseen, dim, num_classes
        return self.declarations()

    def declarations(self, nodes: list[int] | None = None) -> Declarations:
        """What ``nodes`` (default: every live owner) declared: coverage for combining."""
        nodes = self.live if nodes is None else nodes
        return Declarations(
            dim=self.dim,
            num_classes=self.num_classes,
            covered=[self.covered[n] for n in nodes if n in self.covered],
            seen=self.seen,
            unseen=self.unseen,
        )

    def orphaned_classes(self) -> np.ndarray:
        """Classes some owner knew at set-up that no owner still in the run knows."""
        live = [self.covered[n] for n in self.live if n in self.covered]
        known = np.unique(np.concatenate(live)) if live else np.zeros(0, dtype=np.int64)
        return np.setdiff1d(self.initial_classes, known)

    # -- failures ---------------------------------------------------------------------------

    def fail(self, node: int, phase: str, kind: str, reason: str) -> None:
        """Record an owner's failed round trip (error reply, time-out, budget refusal)."""
        self.failures.append({"node": node, "phase": phase, "kind": kind, "reason": reason})
        log(WARNING, "owner node %d failed %s (%s): %s", node, phase, kind, reason)

    def drop(self, nodes: list[int], phase: str, why: dict[int, str]) -> None:
        """Take owners out of the run; fail with who and why once fewer than quorum are left."""
        for n in nodes:
            reason = why.get(n, "its messages kept being rejected")
            log(WARNING, "dropping owner node %d in %s: %s", n, phase, reason)
            self.dropped.append({"node": n, "phase": phase, "reason": reason})
        self.live = [n for n in self.live if n not in nodes]
        if self._settled and len(self.live) < self.required:
            raise OwnerError(self._quorum_message(phase))
        orphaned = self.orphaned_classes() if self.covered else np.zeros(0)
        if orphaned.size:
            log(
                WARNING,
                "class(es) %s have no owner left: the student learns nothing about them",
                orphaned.tolist(),
            )

    def _quorum_message(self, phase: str) -> str:
        who = "; ".join(
            f"node {d['node']} dropped in {d['phase']}: {d['reason']}" for d in self.dropped
        )
        head = (
            f"no owner left in {phase}"
            if not self.live
            else f"only {len(self.live)} of the {self.at_setup} owners that passed set-up are "
            f"left after {phase}, but quorum={self.quorum} needs {self.required}"
        )
        return (
            f"{head}: {who}. Fix or restart those owners (their logs say more), check keys "
            "(service-key, owner-keys, owner-key, service-pub) and the network path, raise "
            "timeout for slow owners, or lower quorum"
        )

    # -- query budgets ----------------------------------------------------------------------

    def count_used(self, node: int, samples: int) -> None:
        """The owner may have answered ``samples`` generated samples (cautious on purpose)."""
        self.used[node] = self.used.get(node, 0) + samples

    def budget_left(self, node: int) -> float:
        """Generated samples ``node`` will still answer (inf: unlimited)."""
        budget = self.budget.get(node, 0)
        return math.inf if budget <= 0 else budget - self.used.get(node, 0)

    def skip(self, nodes: list[int], phase: str) -> None:
        for n in nodes:
            per = self.skipped.setdefault(n, {})
            if not per.get(phase):
                log(
                    WARNING,
                    "owner node %d skipped in %s: query budget %d, %d used",
                    n,
                    phase,
                    self.budget.get(n, 0),
                    self.used.get(n, 0),
                )
            per[phase] = per.get(phase, 0) + 1

    def with_budget(self, size: int, phase: str, reserve: int = 0) -> list[int]:
        """Owners with budget for a request of ``size`` samples, keeping ``reserve`` of the
        budget of those that can afford it for later (verification); the rest are skipped."""
        ok, skip = [], []
        for n in self.live:
            keep = reserve if 0 < reserve <= self.budget.get(n, 0) else 0
            (ok if self.budget_left(n) - keep >= size else skip).append(n)
        self.skip(skip, phase)
        return ok

    def budget_refused(self, node: int, phase: str, refusal: tuple[int, int, int]) -> None:
        """The owner's own count wins: plan with it from now on (skip it, do not drop it)."""
        budget, used, asked = refusal
        self.budget[node], self.used[node] = budget, used
        self.fail(
            node,
            phase,
            "budget",
            f"refused {asked} samples: query-budget {budget}, {used} used (skipped this time)",
        )
        self.skip([node], phase.split("-")[0])

    def check_budgets(self, verify_size: int, samples_per_class: int) -> None:
        """Fail before any query when no owner could ever answer verification."""
        if any(self.budget_left(n) >= verify_size for n in self.live):
            return
        budgets = {n: self.budget[n] for n in self.live}
        raise OwnerError(
            f"no owner's query-budget covers verification: it asks {verify_size} generated "
            f"samples (samples-per-class={samples_per_class} x "
            f"{verify_size // samples_per_class} classes) of each owner, whose "
            f"budgets are {budgets}; lower samples-per-class or raise query-budget in the "
            "owners' node config"
        )

    # -- report -----------------------------------------------------------------------------

    def report(
        self,
        evaluated_model: str,
        zsl_space: str,
        partition: str,
        weighting: str,
        contributors: dict[str, list[int]],
    ) -> FederationReport:
        """The federation part of results.json; ``contributors`` (phase -> who answered) as
        the phases returned them to the run's loop (:meth:`strategies.methods.Method.start`)."""
        return FederationReport(
            node_ids=list(self.live),
            owners_at_setup=self.at_setup,
            quorum=self.quorum,
            dropped=self.dropped,
            failures=self.failures,
            contributors=contributors,
            generator_answers=dict(self.generator_answers),
            orphaned_classes=[int(c) for c in self.orphaned_classes()],
            queries={
                n: {
                    "query_budget": self.budget.get(n, 0),
                    "queries_used": self.used.get(n, 0),
                    "skipped": self.skipped.get(n, {}),
                }
                for n in sorted(self.budget)
            },
            coverage=[self.covered[n].tolist() for n in self.live if n in self.covered],
            seen_classes=self.seen.tolist(),
            unseen_classes=self.unseen.tolist(),
            feature_dim=self.dim,
            evaluated_model=evaluated_model,
            zsl_label_space=zsl_space,
            partition=partition,
            ensemble_weighting=weighting,
        )
