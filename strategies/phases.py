"""What every strategy of this app shares with its owners: set-up, verification, evaluation.

:class:`OwnerPhases` holds the transport, roster and delivery of one run and the
``configure_*``/``aggregate_*`` pairs that do not depend on the method: owners declare
their features and coverage at set-up, the teachers verify service-made features, and
owners score the service's models on their test splits. The methods
(:mod:`strategies.methods`) build their own phases on top. Several sets of phases can share
one run's :class:`Link` (one transport, one roster: one count of round trips, queries and
failures), each with its own settings: the hybrid's DFZSL phases talk to the same owners
as its AZSL rounds, asking them for their cosine teacher.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower.common.config import (
    ConfigError,
    RunConfig,
    Scenario,
    owner_groups,
    parse_calibration_grid,
)
from azsl_flower.common.metrics import ClassCounts, zsl_gzsl
from azsl_flower.common.models import state_to_numpy
from azsl_flower.common.modes import parse_teacher_answer, verify_fields
from azsl_flower.common.semantics import ClassSide
from azsl_flower.service import ensemble
from azsl_flower.service.checkpoint import Checkpointer, CheckpointSettings, fingerprint
from azsl_flower.service.local_regulariser import statistics_asked
from azsl_flower.service.tracking import OwnerTotals
from azsl_flower.wire import schema
from azsl_flower.wire.channels import ServiceSecurity
from strategies.checks import check_evaluate, check_setup, check_verify, privacy_declaration
from strategies.delivery import Delivery
from strategies.faults import FaultInjector
from strategies.requests import Evaluation, Request, Verified, sum_counts
from strategies.roster import OwnerError, Roster
from strategies.sources import VerifyAnswers
from strategies.transport import Transport

__all__ = ["OwnerPhases"]


@dataclass
class Link:
    """How one run reaches its owners, shared by every set of phases of the run: the
    transport (sealing, round trips, bytes) and the roster (who is in, queries, failures)."""

    transport: Transport
    roster: Roster

    @classmethod
    def open(cls, cfg: RunConfig, security: ServiceSecurity) -> Link:
        """A new run's link (with the simulated hostile relay where the config asks for it)."""
        faults = None
        if cfg.fault_tamper > 0 or cfg.fault_replay > 0:
            if security.suite == "none":
                raise ConfigError("fault-tamper/fault-replay need encryption (not 'none')")
            faults = FaultInjector(cfg.fault_tamper, cfg.fault_replay, cfg.seed)
        return cls(Transport(security, cfg.timeout, cfg.poll_interval, faults), Roster(cfg.quorum))


class OwnerPhases:
    """Set-up, verification and evaluation over a Flower Grid, for any number of owners."""

    def __init__(
        self,
        cfg: RunConfig,
        classes: ClassSide,
        device: torch.device,
        security: ServiceSecurity | None = None,
        *,
        link: Link | None = None,
        settings: dict[str, object] | None = None,
    ) -> None:
        """A new run's phases (``security``), or phases joining a run's ``link`` with their
        own ``settings`` (what every request carries; default: the run config's)."""
        if (security is None) == (link is None):
            raise TypeError("OwnerPhases: give security (a new run) or link (joining a run)")
        self.cfg, self.classes, self.device = cfg, classes, device
        self.settings = cfg.owner_settings() if settings is None else settings
        self.link = link if link is not None else Link.open(cfg, security)  # type: ignore[arg-type]
        self.transport, self.roster = self.link.transport, self.link.roster
        self.delivery = Delivery(self.transport, self.roster, self.settings, cfg.max_retries)
        self.checkpoint = Checkpointer(CheckpointSettings.from_config(cfg), fingerprint(cfg))
        self.privacy: dict[int, dict[str, object]] = {}  # what each owner declared at set-up

    # -- set-up -----------------------------------------------------------------------------

    def configure_setup(self, grid: Grid) -> Request:
        """Ask every connected node to declare its feature size, coverage and budget."""
        nodes = sorted(grid.get_node_ids())
        if self.cfg.partition == "explicit" and nodes:  # before any message
            owner_groups(self.cfg.owner_classes, len(nodes), self.classes.num_classes)
        self.roster.start(nodes)
        scenario = self.cfg.scenario
        check = check_setup(
            self.classes.num_classes,
            scenario is Scenario.WEIGHTS,
            scenario is Scenario.DFZSL,
            statistics_asked(self.cfg),
        )
        return Request(schema.SETUP, "setup", [{}], nodes, check)

    def setup(self, grid: Grid) -> tuple[dict[int, schema.Payload], ensemble.Declarations]:
        """The set-up round trip of any method: each owner's answer (its keys are the
        phase's contributors) and what they declared."""
        setup = {n: r[0] for n, r in self.delivery.ask(grid, self.configure_setup(grid)).items()}
        return setup, self.aggregate_setup(setup)

    def aggregate_setup(self, answers: dict[int, schema.Payload]) -> ensemble.Declarations:
        """Agree on the feature size, record coverage, test counts and query budgets.

        Each answer was already checked on its own (:func:`strategies.checks.check_setup`).
        Owners whose feature size differs from the one agreed on are dropped, each named
        with its reason: a disagreement is the dropped owners' failure, never the run's.
        The majority's size wins. A tie cannot be settled from declarations alone (the
        service cannot tell which side extracted features the expected way), so a fixed
        rule settles it: the side whose teachers cover more classes (the run learns more
        from it), then the side with the lowest node id (deterministic). With three or more
        owners one hostile owner never makes a tie of an agreement.
        """
        dims = {n: int(r.scalars["dim"]) for n, r in answers.items()}  # type: ignore[call-overload]
        dim, tie = self._agreed_dim(dims, {n: r.arrays["covered"] for n, r in answers.items()})
        why = (
            f"as many owners {dim}-d: a tie goes to the side covering more classes, then to "
            "the lowest node id"
            if tie
            else f"the other owners {dim}-d"
        )
        odd = {n: f"declared {d}-d features, {why}" for n, d in dims.items() if d != dim}
        if odd:
            self.roster.drop(list(odd), "setup", odd)
        answers = {n: r for n, r in answers.items() if n in self.roster.live}
        replies = list(answers.values())
        self.privacy = {n: privacy_declaration(r) for n, r in answers.items()}
        faults = self.transport.faults
        if faults is not None:
            if not all(bool(r.scalars["simulated"]) for r in replies):
                raise ConfigError(
                    "fault-tamper/fault-replay are for simulations only; an owner runs deployed"
                )
            faults.enabled = True
        if not replies:
            self.roster.settle()  # fails naming who dropped out and why
        seen = np.unique(np.concatenate([r.arrays["seen"] for r in replies]))
        unseen = np.unique(np.concatenate([r.arrays["unseen"] for r in replies]))
        return self.roster.admit(
            covered={n: r.arrays["covered"] for n, r in answers.items()},
            budgets={n: int(r.scalars["query_budget"]) for n, r in answers.items()},  # type: ignore[call-overload]
            seen=seen,
            unseen=np.setdiff1d(unseen, seen),
            dim=dim,
            num_classes=self.classes.num_classes,
            test_counts={
                n: (r.arrays["test_seen_counts"], r.arrays["test_unseen_counts"])
                for n, r in answers.items()
            },
        )

    @staticmethod
    def _agreed_dim(dims: dict[int, int], covered: dict[int, np.ndarray]) -> tuple[int, bool]:
        """The feature size the run goes on with, and whether a tie picked it (the rule is
        :meth:`aggregate_setup`'s)."""
        if not dims:
            return 0, False
        tally = Counter(dims.values())
        most = max(tally.values())
        tied = [d for d, c in tally.items() if c == most]
        if len(tied) == 1:
            return tied[0], False

        def side(d: int) -> tuple[int, int]:
            nodes = [n for n, nd in dims.items() if nd == d]
            classes = np.unique(np.concatenate([covered[n] for n in nodes]))
            return -classes.size, min(nodes)

        return min(tied, key=side), True

    # -- verification -----------------------------------------------------------------------

    def configure_verify(
        self, x: np.ndarray, y: np.ndarray, nodes: list[int], phase: str = "verification"
    ) -> Request:
        teacher = parse_teacher_answer(self.cfg.asked_teacher_answer)
        check = check_verify(
            int(y.size),
            self.classes.num_classes,
            self.roster.covered,
            verify_fields(teacher),
            full=teacher.whole,
        )
        return Request(schema.VERIFY, phase, [{"arrays": {"x": x, "y": y}}], nodes, check)

    def aggregate_verify(self, answers: VerifyAnswers, trainable: np.ndarray) -> Verified:
        """Keep the generated samples the combined teachers label as intended (Eq. 3)."""
        x, y = answers.x, answers.y
        coverage = self.roster.declarations(answers.nodes).coverage
        mode = self.cfg.ensemble_weighting
        probs = ensemble.combine(answers.probs, coverage, y, answers.probs, mode, answers.lse)
        agree = probs.argmax(1) == y
        # verification=false (an ablation): the student also learns from samples the
        # teachers label otherwise, with the teachers' labels as its targets
        keep = agree if self.cfg.verification else np.ones_like(agree)
        missing = np.setdiff1d(trainable, np.unique(y[keep]))
        if missing.size:
            log(WARNING, "no verified sample for %d class(es): %s", missing.size, missing.tolist())
        report = {
            "enabled": self.cfg.verification,
            "generated": int(y.size),
            "kept": int(keep.sum()),
            "pass_rate": float(agree.mean()) if y.size else 0.0,
            "classes_without_samples": [int(c) for c in missing],
        }
        log(INFO, "verification kept %d/%d generated samples", keep.sum(), y.size)
        return Verified(x, y, probs, keep, report, list(answers.nodes))

    def ask_with_budget(self, size: int, phase: str, reserve: int = 0) -> list[int]:
        """Owners whose query budget takes ``size`` more samples (keeping ``reserve`` for
        later phases where the budget allows); none: a clear error."""
        nodes = self.roster.with_budget(size, phase, reserve=reserve)
        if not nodes:
            raise OwnerError(
                f"no owner's query-budget covers {phase} ({size} samples); lower dfzsl-probes or "
                "dfzsl-samples, or raise query-budget in the owners' node config"
            )
        return nodes

    def verify(self, grid: Grid, x: np.ndarray, y: np.ndarray, phase: str) -> Verified:
        """One verification round trip: which virtual features the teachers accept (and
        who answered: ``nodes``, the phase's contributors)."""
        nodes = self.ask_with_budget(int(y.size), phase)
        replies = self.delivery.ask(grid, self.configure_verify(x, y, nodes, phase))
        if not replies:
            raise OwnerError(f"no owner answered {phase}; see the failures above")
        arrays = [a[0].arrays for a in replies.values()]
        lse = [a["lse"] for a in arrays] if all("lse" in a for a in arrays) else None
        answers = VerifyAnswers(list(replies), x, y, [a["probs"] for a in arrays], lse)
        return self.aggregate_verify(answers, np.unique(y))

    # -- evaluation -------------------------------------------------------------------------

    def calibration_values(self) -> np.ndarray:
        """What the owners score: the run's value first; on split=val also the grid.

        A test run scores only its own value, so the curve that picks one can only come
        from validation classes.
        """
        grid = parse_calibration_grid(self.cfg.calibration_grid) if self.cfg.split == "val" else []
        return np.asarray([self.cfg.calibration, *grid], dtype=np.float32)

    def configure_evaluate(self, models: dict[str, torch.nn.Module], unseen: np.ndarray) -> Request:
        """Every model to every owner in one round trip."""
        arrays = {"unseen": unseen.astype(np.int64), "calibration": self.calibration_values()}
        payloads = [{"arrays": arrays, "weights": state_to_numpy(m)} for m in models.values()]
        check = check_evaluate(
            self.classes.num_classes, int(arrays["calibration"].size), self.roster.test_counts
        )
        return Request(schema.EVALUATE, "evaluation", payloads, list(self.roster.live), check)

    def aggregate_evaluate(
        self, replies: dict[int, list[schema.Payload]], names: list[str]
    ) -> Evaluation:
        """Sum the owners' per-class counts per model; each model's calibration curve."""
        if not replies:
            raise OwnerError("no owner answered the evaluation round trip; see the failures above")
        by_model = {name: [node[i] for node in replies.values()] for i, name in enumerate(names)}
        counts = {name: sum_counts(a, "model") for name, a in by_model.items()}
        curves = {name: self._curve(a, counts[name]) for name, a in by_model.items()}
        return Evaluation(
            models=counts,
            teacher=sum_counts([r[0] for r in replies.values()], "teacher"),
            per_owner={n: sum_counts([r[0]], "teacher") for n, r in replies.items()},
            curves=curves,
        )

    def _curve(self, replies: list[schema.Payload], counts: ClassCounts) -> list[dict[str, float]]:
        """ZSL/GZSL figures per calibration value of the grid, summed over the owners."""
        gammas = self.calibration_values()[1:]
        if not gammas.size:
            return []
        seen = sum(r.arrays["model_seen_curve"] for r in replies)
        unseen = sum(r.arrays["model_unseen_curve"] for r in replies)
        curve = []
        for i, gamma in enumerate(gammas, start=1):  # row 0 is the run's own value
            shifted = replace(counts, seen_correct=seen[i], unseen_correct=unseen[i])
            figures = zsl_gzsl(shifted, self.cfg.teacher.zsl_space)
            curve.append({"calibration": round(float(gamma), 6), **figures})
        return curve

    def _owner_totals(self) -> OwnerTotals:
        traffic = self.transport.traffic
        return OwnerTotals(
            queries=dict(self.roster.used),
            bytes_sent=dict(traffic.sent_by_node),
            bytes_received=dict(traffic.received_by_node),
            round_trips=traffic.round_trips,
            total_sent=traffic.bytes_sent,
            total_received=traffic.bytes_received,
        )
