"""AZSLStrategy: the AI service's side of the conversation with the data owners.

Shaped like Flower's own strategies: each phase has a ``configure_*`` that builds the
messages and an ``aggregate_*`` that turns replies into something the learner can use;
``start`` runs Algorithm 1. Round trips are the expensive part (≈0.1 s simulated, ≈10 s
deployed), so each one carries a pool of ``steps-per-round`` generated batches and its
answers drive that many generator updates; messages are pushed together and replies
polled at ``poll-interval``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower import protocol as P
from azsl_flower.checkpoint import Checkpointer
from azsl_flower.config import (
    ConfigError,
    RunConfig,
    parse_calibration_grid,
    parse_owner_classes,
)
from azsl_flower.crypto import RejectedError
from azsl_flower.faults import FaultInjector
from azsl_flower.feedback import FeedbackOracle, KLRegulariser, Regulariser
from azsl_flower.metrics import ClassCounts, zsl_gzsl
from azsl_flower.models import classifier, load_numpy_state, state_to_numpy
from azsl_flower.secure import ServiceSecurity
from azsl_flower.semantics import ClassSide
from azsl_flower.service import Federation, Pool, Service, combine_over_owners, joint_gradient

__all__ = ["AZSLStrategy", "OwnerError", "RunResult"]

MAX_MESSAGE_BYTES = 2**30  # generated features per verification round trip


class OwnerError(RuntimeError):
    """Too few owners left in the run (failures, time-outs, rejections): names who and why."""


def _samples(kind: P.Kind, payloads: list[dict[str, object]]) -> int:
    """Generated samples a request asks about: what an owner counts against its budget."""
    if kind is not P.FEEDBACK and kind is not P.VERIFY:
        return 0
    return sum(int(np.asarray(p["arrays"]["y"]).size) for p in payloads)  # type: ignore[index]


def _first_line(text: str, limit: int = 500) -> str:
    """An owner's error reason, short enough for a log line (a traceback may follow it)."""
    lines = str(text).strip().splitlines()
    line = lines[0] if lines else "(no reason given)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class Traffic:
    rounds: int = 0
    messages: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retries: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    rejections: list[dict[str, object]] = field(default_factory=list)
    sent_by_node: dict[int, int] = field(default_factory=dict)  # payload bytes per owner
    received_by_node: dict[int, int] = field(default_factory=dict)


@dataclass
class RunResult:
    teacher: dict[str, float]
    student: dict[str, float]
    extra_models: dict[str, dict[str, float]]
    traffic: Traffic
    phases: dict[str, float]
    generator: torch.nn.Module
    student_model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    verification: dict[str, float] = field(default_factory=dict)
    federation: dict[str, object] = field(default_factory=dict)
    per_owner_teacher: dict[str, dict[str, float]] = field(default_factory=dict)
    # calibrated stacking: the value applied; on split=val also the curve and its best value
    calibration: dict[str, object] = field(default_factory=dict)


class AZSLStrategy:
    """Runs AZSL over a Flower Grid for any number of owners."""

    def __init__(
        self,
        cfg: RunConfig,
        classes: ClassSide,
        device: torch.device,
        security: ServiceSecurity,
    ) -> None:
        self.cfg, self.classes, self.device = cfg, classes, device
        self.security = security
        self.settings = cfg.owner_settings()
        self.traffic = Traffic()
        self.node_ids: list[int] = []  # owners still in the run
        self.dropped: list[int] = []
        self.required = 1  # owners the run needs (quorum x owners present at set-up)
        self.covered: dict[int, np.ndarray] = {}  # node -> classes its teacher knows
        self.initial_classes = np.zeros(0, dtype=np.int64)  # classes some owner knew at set-up
        # who did what, for results.json
        self.failures: list[dict[str, object]] = []  # {node, phase, kind, reason}
        self.drops: list[dict[str, object]] = []  # {node, phase, reason}
        self.contributors: dict[str, list[int]] = {}  # phase -> nodes that answered
        self.generator_answers: dict[int, int] = {}  # node -> generator round trips answered
        # query budgets (generated samples per run; 0 = unlimited), declared at set-up
        self.budget: dict[int, int] = {}
        self.used: dict[int, int] = {}  # samples each owner answered (or may have)
        self.skipped: dict[int, dict[str, int]] = {}  # node -> phase -> round trips skipped
        self.fed: Federation | None = None
        self.checkpoint = Checkpointer(cfg)
        self.resumed_from: int | None = None  # first generator round of a resumed run
        self.faults: FaultInjector | None = None
        if cfg.fault_tamper > 0 or cfg.fault_replay > 0:
            if security.suite == "none":
                raise ConfigError("fault-tamper/fault-replay need encryption (not 'none')")
            self.faults = FaultInjector(cfg.fault_tamper, cfg.fault_replay, cfg.seed)

    # -- transport --------------------------------------------------------------------------

    def _round_trip(self, grid: Grid, messages: list[Message], kind: P.Kind) -> list[Message | str]:
        """Push all messages at once, poll for every reply; one round trip, counted.

        A message the grid did not queue, or whose reply did not come within ``timeout``,
        comes back as the reason why not: the caller fails that owner, never the whole run.
        """
        self.traffic.rounds += 1
        self.traffic.messages += len(messages)
        if self.faults is not None:
            messages = [self.faults.outgoing(m) for m in messages]
        for m in messages:
            nbytes, node = P.payload_nbytes(m.content), m.metadata.dst_node_id
            self.traffic.bytes_sent += nbytes
            self.traffic.sent_by_node[node] = self.traffic.sent_by_node.get(node, 0) + nbytes
        ids = list(grid.push_messages(messages))
        if len(ids) != len(messages):
            raise OwnerError(
                f"{kind.message_type}: the grid returned {len(ids)} message ids for "
                f"{len(messages)} messages"
            )
        pending, replies = {i for i in ids if i}, {}
        deadline = time.monotonic() + self.cfg.timeout
        while pending:
            for reply in grid.pull_messages(list(pending)):
                replies[reply.metadata.reply_to_message_id] = reply
                pending.discard(reply.metadata.reply_to_message_id)
            if pending:
                if time.monotonic() > deadline:
                    break  # the silent owners fail this round trip; the others go on
                time.sleep(self.cfg.poll_interval)
        silent = f"no answer within timeout={self.cfg.timeout}s"
        out: list[Message | str] = [
            replies.get(mid, silent) if mid else "the grid did not queue the message" for mid in ids
        ]
        if self.faults is not None:
            out = [r if isinstance(r, str) else self.faults.incoming(r) for r in out]
        for m, reply in zip(messages, out, strict=True):
            if not isinstance(reply, str) and not reply.has_error():
                nbytes, node = P.payload_nbytes(reply.content), m.metadata.dst_node_id
                self.traffic.bytes_received += nbytes
                got = self.traffic.received_by_node
                got[node] = got.get(node, 0) + nbytes
        return out

    def _reject(
        self, node: int, kind: P.Kind, phase: str, side: str, reason: str, why: str
    ) -> None:
        """Count a refused message and log it once."""
        self.traffic.rejected[reason] = self.traffic.rejected.get(reason, 0) + 1
        self.traffic.rejections.append(
            {"node": node, "kind": kind.message_type, "phase": phase, "by": side, "reason": reason}
        )
        log(
            WARNING,
            "%s rejected a %s message (node %d, %s): %s",
            side,
            kind.message_type,
            node,
            phase,
            why,
        )

    def _fail(self, node: int, phase: str, kind: str, reason: str) -> None:
        """Record an owner's failed round trip (error reply, time-out, budget refusal)."""
        self.failures.append({"node": node, "phase": phase, "kind": kind, "reason": reason})
        log(WARNING, "owner node %d failed %s (%s): %s", node, phase, kind, reason)

    def _ask_all(
        self,
        grid: Grid,
        kind: P.Kind,
        payloads: list[dict[str, object]] | None = None,
        phase: str = "",
        nodes: list[int] | None = None,
    ) -> dict[int, list[P.Payload]]:
        """Every payload to every owner in ``nodes`` (default: all still in the run), sealed
        in one message per owner; the answers by node, for the owners that answered.

        A message refused by either end (tampered, replayed, wrong key...), answered with an
        error, or not answered within ``timeout`` is re-sent, freshly sealed, in a follow-up
        round trip up to ``max-retries`` times; an owner that still fails is dropped and the
        run goes on while ``quorum`` of the owners are left. An owner that refuses because
        of its query budget is only skipped this time: it has not failed.
        """
        payloads = payloads if payloads is not None else [{}]
        parts = [P.encode(kind, "request", settings=self.settings, **p) for p in payloads]  # type: ignore[arg-type]
        samples = _samples(kind, payloads)
        phase = phase or kind.message_type
        answers: dict[int, list[P.Payload]] = {}
        todo = list(self.node_ids if nodes is None else nodes)
        why: dict[int, str] = {}  # node -> why its last attempt failed
        offline: list[int] = []  # nodes Flower reported unavailable in the last attempt
        for attempt in range(self.cfg.max_retries + 1):
            if offline:  # a restarting SuperNode: re-send once it is back, not straight away
                self._await_nodes(grid, offline, phase)
            offline = []
            unreachable = [n for n in todo if not self.security.addressable(n)]
            if unreachable:  # no allow-listed key left for it: not one of our owners
                reason = "no allow-listed owner key is left for it (not one of our owners)"
                self._drop(unreachable, phase, dict.fromkeys(unreachable, reason))
                todo = [n for n in todo if n not in unreachable]
                if not todo:
                    break
            msgs = [
                Message(
                    content=self.security.seal(n, kind.message_type, phase, parts),
                    dst_node_id=n,
                    message_type=kind.message_type,
                )
                for n in todo
            ]
            failed = []
            for node, reply in zip(todo, self._round_trip(grid, msgs, kind), strict=True):
                if isinstance(reply, str):
                    self.used[node] = self.used.get(node, 0) + samples  # it may have answered
                    why[node] = reply
                    self._fail(node, phase, "timeout", why[node])
                    failed.append(node)
                    continue
                if reply.has_error():
                    code, text = int(reply.error.code), str(reply.error.reason)
                    reason = P.parse_rejection(code, text)
                    if reason is not None:
                        self._reject(node, kind, phase, "owner", reason, text)
                        why[node] = f"the owner rejected our message ({reason})"
                        failed.append(node)
                        continue
                    refusal = P.parse_budget_refusal(code, text)
                    if refusal is not None:
                        self._budget_refused(node, phase, refusal)
                        continue
                    if code == ErrorCode.NODE_UNAVAILABLE:
                        offline.append(node)
                    why[node] = f"error reply (code {code}): {_first_line(text)}"
                    self._fail(node, phase, "error", why[node])
                    failed.append(node)
                    continue
                try:
                    opened = self.security.open(node, kind.message_type, reply.content)
                    if len(opened) != len(parts):
                        raise RejectedError(
                            "malformed", f"{len(opened)} answers to {len(parts)} payloads"
                        )
                except RejectedError as exc:
                    self.used[node] = self.used.get(node, 0) + samples  # the owner answered
                    self._reject(node, kind, phase, "service", exc.reason, str(exc))
                    why[node] = f"we rejected its reply ({exc.reason})"
                    failed.append(node)
                    continue
                self.used[node] = self.used.get(node, 0) + samples
                try:
                    answers[node] = [P.decode(kind, "reply", rd) for rd in opened]
                except P.ProtocolError as exc:  # authentic but off-schema: a broken owner
                    why[node] = f"malformed answer: {exc}"
                    self._fail(node, phase, "error", why[node])
                    failed.append(node)
            todo = failed
            if not todo:
                break
            if attempt < self.cfg.max_retries:
                self.traffic.retries += len(todo)
        if todo:
            self._drop(todo, phase, why)
        return {n: answers[n] for n in self.node_ids if n in answers}

    def _await_nodes(self, grid: Grid, nodes: list[int], phase: str) -> None:
        """Wait up to ``timeout`` for SuperNodes Flower reported offline to reconnect.

        A SuperNode that is restarted keeps its node id (its authentication key), but while
        it is away the SuperLink answers every message for it with "node unavailable" at
        once: re-sending straight away would spend all retries within a second.
        """
        deadline = time.monotonic() + self.cfg.timeout
        log(
            INFO,
            "%s: waiting up to %.0f s for node(s) %s to come back",
            phase,
            self.cfg.timeout,
            nodes,
        )
        while time.monotonic() < deadline:
            if set(nodes) <= set(grid.get_node_ids()):
                return
            time.sleep(max(self.cfg.poll_interval, 0.5))

    def _budget_refused(self, node: int, phase: str, refusal: tuple[int, int, int]) -> None:
        """The owner's own count wins: plan with it from now on (skip it, do not drop it)."""
        budget, used, asked = refusal
        self.budget[node], self.used[node] = budget, used
        self._fail(
            node,
            phase,
            "budget",
            f"refused {asked} samples: query-budget {budget}, {used} used (skipped this time)",
        )
        self._skip([node], phase.split("-")[0])

    def _drop(self, nodes: list[int], phase: str, why: dict[int, str]) -> None:
        """Take owners out of the run; fail with who and why once fewer than quorum are left."""
        for n in nodes:
            reason = why.get(n, "its messages kept being rejected")
            log(WARNING, "dropping owner node %d in %s: %s", n, phase, reason)
            self.drops.append({"node": n, "phase": phase, "reason": reason})
        self.dropped += nodes
        self.node_ids = [n for n in self.node_ids if n not in nodes]
        if len(self.node_ids) < self.required:
            raise OwnerError(self._quorum_message(phase))
        if self.fed is not None:  # coverage follows the owners still in the run
            self.fed.covered = [self.covered[n] for n in self.node_ids]
            orphaned = self.orphaned_classes()
            if orphaned.size:
                log(
                    WARNING,
                    "class(es) %s have no owner left: the student learns nothing about them",
                    orphaned.tolist(),
                )

    def _quorum_message(self, phase: str) -> str:
        total = len(self.node_ids) + len(self.dropped)
        who = "; ".join(
            f"node {d['node']} dropped in {d['phase']}: {d['reason']}" for d in self.drops
        )
        head = (
            f"no owner left in {phase}"
            if not self.node_ids
            else f"only {len(self.node_ids)} of the {total} owners present at set-up are left "
            f"after {phase}, but quorum={self.cfg.quorum} needs {self.required}"
        )
        return (
            f"{head}: {who}. Fix or restart those owners (their logs say more), check keys "
            "(service-key, owner-keys, owner-key, service-pub) and the network path, raise "
            "timeout for slow owners, or lower quorum"
        )

    def orphaned_classes(self) -> np.ndarray:
        """Classes some owner knew at set-up that no owner still in the run knows."""
        live = [self.covered[n] for n in self.node_ids if n in self.covered]
        known = np.unique(np.concatenate(live)) if live else np.zeros(0, dtype=np.int64)
        return np.setdiff1d(self.initial_classes, known)

    # -- query budgets ----------------------------------------------------------------------

    def _left(self, node: int) -> float:
        """Generated samples ``node`` will still answer (inf: unlimited)."""
        budget = self.budget.get(node, 0)
        return math.inf if budget <= 0 else budget - self.used.get(node, 0)

    def _skip(self, nodes: list[int], phase: str) -> None:
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

    def _with_budget(self, size: int, phase: str, reserve: int = 0) -> list[int]:
        """Owners with budget for a request of ``size`` samples, keeping ``reserve`` of the
        budget of those that can afford it for later (verification); the rest are skipped."""
        ok, skip = [], []
        for n in self.node_ids:
            keep = reserve if 0 < reserve <= self.budget.get(n, 0) else 0
            (ok if self._left(n) - keep >= size else skip).append(n)
        self._skip(skip, phase)
        return ok

    # -- set-up -----------------------------------------------------------------------------

    def configure_setup(self, grid: Grid) -> list[int]:
        nodes = sorted(grid.get_node_ids())
        if not nodes:
            raise OwnerError("no data owner (SuperNode) is connected")
        if self.cfg.partition == "explicit":
            groups = parse_owner_classes(self.cfg.owner_classes)
            if len(groups) != len(nodes):
                raise ConfigError(
                    f"owner-classes={self.cfg.owner_classes!r} has {len(groups)} group(s) but "
                    f"{len(nodes)} owners are connected; give exactly one ';'-separated group "
                    "per owner"
                )
            outside = sorted({c for g in groups for c in g if c >= self.classes.num_classes})
            if outside:
                raise ConfigError(
                    f"owner-classes names class(es) {outside} but the dataset has "
                    f"{self.classes.num_classes} classes (0-based)"
                )
        self.node_ids = nodes
        # quorum counts the owners present now; 1e-9: 0.5 x 4 owners needs 2, not 3
        self.required = max(1, math.ceil(self.cfg.quorum * len(nodes) - 1e-9))
        return nodes

    def aggregate_setup(self, answers: dict[int, P.Payload]) -> Federation:
        """Check the owners' declarations agree and record coverage and query budgets."""
        replies = list(answers.values())
        dims = {int(r.scalars["dim"]) for r in replies}
        if len(dims) != 1:
            raise ValueError(
                f"owners declared different feature dimensions {sorted(dims)}; every owner must "
                "extract features with the same network"
            )
        ncls = {int(r.scalars["num_classes"]) for r in replies}
        if ncls != {self.classes.num_classes}:
            raise ValueError(
                f"owners declared {sorted(ncls)} classes, the service's class list has "
                f"{self.classes.num_classes}; use the same att_splits.mat on both sides"
            )
        if self.faults is not None:
            if not all(bool(r.scalars["simulated"]) for r in replies):
                raise ConfigError(
                    "fault-tamper/fault-replay are for simulations only; an owner runs deployed"
                )
            self.faults.enabled = True
        self.covered = {n: r.arrays["covered"] for n, r in answers.items()}
        self.budget = {n: int(r.scalars["query_budget"]) for n, r in answers.items()}
        self.used = dict.fromkeys(answers, 0)
        self.initial_classes = np.unique(np.concatenate(list(self.covered.values())))
        seen = np.unique(np.concatenate([r.arrays["seen"] for r in replies]))
        unseen = np.unique(np.concatenate([r.arrays["unseen"] for r in replies]))
        self.fed = Federation(
            dim=dims.pop(),
            num_classes=self.classes.num_classes,
            covered=[self.covered[n] for n in self.node_ids],
            seen=seen,
            unseen=np.setdiff1d(unseen, seen),
        )
        return self.fed

    # -- feedback ---------------------------------------------------------------------------

    @property
    def _lse_grad(self) -> bool:
        """Ask owners for grad(lse) too: only the joint ensemble in white-box needs it, and
        only with several owners (one owner's joint gradient is its own gradient)."""
        cfg = self.cfg
        joint = cfg.ensemble_weighting == "joint" and cfg.scenario != "blackbox"
        return joint and len(self.node_ids) > 1

    def configure_feedback(self, pool: Pool) -> dict[str, object]:
        return {
            "arrays": {"x": pool.x, "y": pool.labels},
            "scalars": {"batch_size": pool.batch_size, "lse_grad": self._lse_grad},
        }

    def aggregate_feedback(
        self, replies: list[P.Payload] | list[dict[str, np.ndarray]], fed: Federation, y: np.ndarray
    ) -> dict[str, np.ndarray]:
        answers = [r.arrays if isinstance(r, P.Payload) else r for r in replies]
        probs, lse = [a["probs"] for a in answers], [a["lse"] for a in answers]
        grads = [a["grad"] for a in answers]
        if self.cfg.ensemble_weighting == "joint":
            sent = all("grad_lse" in a for a in answers)
            if self._lse_grad and not sent and len(answers) > 1:
                raise OwnerError("ensemble-weighting=joint: an owner sent no grad_lse")
            grads_lse = [a["grad_lse"] for a in answers] if sent else None
            grad = joint_gradient(grads, grads_lse, probs, lse, fed.coverage, y)
        else:
            grad = self.combine(grads, fed, y, probs, lse)
        return {
            "probs": self.combine(probs, fed, y, probs, lse),
            "grad": grad,
            "ce": np.mean([a["ce"] for a in answers], 0),
            "reg": np.mean([a["reg"] for a in answers], 0),
        }

    def combine(
        self,
        per_owner: list[np.ndarray],
        fed: Federation,
        y: np.ndarray,
        probs: list[np.ndarray],
        lse: list[np.ndarray],
    ) -> np.ndarray:
        """One answer per sample from every owner's, by the run's ensemble-weighting.

        The same rule combines feedback, verification and (through verification) the
        student's targets, so all three agree on which owner speaks for a class.
        """
        mode = self.cfg.ensemble_weighting
        return combine_over_owners(per_owner, fed.coverage, y, probs, mode, lse)

    # -- evaluation -------------------------------------------------------------------------

    def aggregate_evaluate(self, replies: list[P.Payload], who: str) -> ClassCounts:
        total = None
        for r in replies:
            c = ClassCounts(*(r.arrays[f"{who}_{f}"] for f in ClassCounts.__dataclass_fields__))
            total = c if total is None else total + c
        assert total is not None
        return total

    @property
    def zsl_space(self) -> str:
        """ZSL T1's label space: unseen classes for an inductive teacher, else all classes."""
        return "unseen" if self.cfg.teacher == "inductive" else "all"

    def calibration_values(self) -> np.ndarray:
        """What the owners score: the run's value first; on split=val also the grid.

        A test run scores only its own value, so the curve that picks one can only come
        from validation classes.
        """
        grid = parse_calibration_grid(self.cfg.calibration_grid) if self.cfg.split == "val" else []
        return np.asarray([self.cfg.calibration, *grid], dtype=np.float32)

    def calibration_curve(self, replies: list[P.Payload], counts: ClassCounts, space: str) -> list:
        """ZSL/GZSL figures per calibration value of the grid, summed over the owners."""
        gammas = self.calibration_values()[1:]
        if not gammas.size:
            return []
        seen = sum(r.arrays["model_seen_curve"] for r in replies)
        unseen = sum(r.arrays["model_unseen_curve"] for r in replies)
        curve = []
        for i, gamma in enumerate(gammas, start=1):  # row 0 is the run's own value
            shifted = replace(counts, seen_correct=seen[i], unseen_correct=unseen[i])
            curve.append({"calibration": round(float(gamma), 6), **zsl_gzsl(shifted, space)})
        return curve

    def evaluate(
        self, grid: Grid, models: dict[str, torch.nn.Module], unseen: np.ndarray
    ) -> tuple[dict[str, ClassCounts], ClassCounts, dict[int, ClassCounts], dict[str, list]]:
        """Send every model to every owner in one round trip; sum their per-class counts.

        Also returns each answering owner's own teacher counts (its teacher on its split)
        and each model's calibration curve (split=val; empty otherwise).
        """
        arrays = {"unseen": unseen.astype(np.int64), "calibration": self.calibration_values()}
        payloads = [{"arrays": arrays, "weights": state_to_numpy(m)} for m in models.values()]
        replies = self._ask_all(grid, P.EVALUATE, payloads, phase="evaluation")
        if not replies:
            raise OwnerError("no owner answered the evaluation round trip; see the failures above")
        self.contributors["evaluation"] = list(replies)
        by_model = {name: [node[i] for node in replies.values()] for i, name in enumerate(models)}
        per_model = {name: self.aggregate_evaluate(a, "model") for name, a in by_model.items()}
        curves = {
            name: self.calibration_curve(a, per_model[name], self.zsl_space)
            for name, a in by_model.items()
        }
        per_owner = {n: self.aggregate_evaluate([r[0]], "teacher") for n, r in replies.items()}
        teacher = self.aggregate_evaluate([r[0] for r in replies.values()], "teacher")
        return per_model, teacher, per_owner, curves

    def _view(self, fed: Federation, nodes: list[int]) -> Federation:
        """The federation as seen by the owners that answered one round trip (combine weights)."""
        return replace(fed, covered=[self.covered[n] for n in nodes])

    # -- Algorithm 1 ------------------------------------------------------------------------

    def start(
        self, grid: Grid, progress: Callable[[str, int, int, dict[str, float]], None] | None = None
    ) -> RunResult:
        cfg, phases = self.cfg, {}
        t0 = time.monotonic()
        self.configure_setup(grid)
        setup = {n: r[0] for n, r in self._ask_all(grid, P.SETUP, phase="setup").items()}
        fed = self.aggregate_setup(setup)
        self.contributors["setup"] = list(setup)
        service = Service(cfg, self.classes, fed, self.device)
        local = self._local_oracles(setup) if cfg.scenario == "weights" else None
        # generated samples one owner verifies; owners that can afford it keep it in reserve
        verify_size = cfg.samples_per_class * int(fed.trainable.size)
        if local is None:
            self._check_budgets(verify_size)
        phases["setup"] = time.monotonic() - t0
        log(
            INFO,
            "AZSL: %d owner(s), feature dim %d, %d classes (%d seen, %d unseen), scenario %s",
            len(self.node_ids),
            fed.dim,
            fed.num_classes,
            fed.seen.size,
            fed.unseen.size,
            cfg.scenario,
        )

        # Generator phase: one round trip per pool of steps-per-round batches.
        t = time.monotonic()
        history: list[dict[str, float]] = []
        first = 1
        saved = self.checkpoint.load()
        if saved is not None:  # a crashed or stopped run with these settings: go on from it
            service.load_state_dict(saved["service"])
            history = list(saved["extra"]["history"])
            self.generator_answers = {int(n): k for n, k in saved["extra"]["answers"].items()}
            first = self.resumed_from = int(saved["round"]) + 1
        pool_size = cfg.steps_per_round * cfg.batch_size
        for r in range(first, cfg.rounds + 1):
            if local is not None:  # weights scenario: fresh gradients, no messages
                stats = self._local_round(service, local, fed)
                answered = list(local)
            else:
                asked = self._with_budget(pool_size, "generator", reserve=verify_size)
                if not asked:
                    log(
                        WARNING,
                        "no owner has query budget left for a pool of %d samples: the "
                        "generator phase ends after %d of %d rounds",
                        pool_size,
                        r - 1,
                        cfg.rounds,
                    )
                    break
                classes = np.unique(np.concatenate([self.covered[n] for n in asked]))
                pool = service.make_pool(cfg.steps_per_round, classes)
                replies = self._ask_all(
                    grid,
                    P.FEEDBACK,
                    [self.configure_feedback(pool)],
                    phase=f"generator-{r}",
                    nodes=asked,
                )
                answered = list(replies)
                if not answered:
                    log(WARNING, "generator round %d: no owner answered; no update", r)
                    continue
                view = self._view(fed, answered)
                fb = self.aggregate_feedback([a[0] for a in replies.values()], view, pool.labels)
                stats = service.apply_feedback(pool, fb["probs"], fb["grad"])
                stats.update(self._pool_stats(fb, pool.labels))
            for n in answered:
                self.generator_answers[n] = self.generator_answers.get(n, 0) + 1
            stats["owners"] = len(answered)
            stats["round"] = r
            history.append(stats)
            if self.checkpoint.due(r):
                answers = {str(n): k for n, k in self.generator_answers.items()}
                extra = {"history": history, "answers": answers}
                self.checkpoint.save(r, service.state_dict(), extra)
            if progress:
                progress("generator", r, cfg.rounds, stats)
        self.contributors["generator"] = sorted(self.generator_answers)
        phases["generator"] = time.monotonic() - t

        # Verification (Eq. 3): keep generated samples the teachers label as intended.
        t = time.monotonic()
        if local is not None:
            verifiers = [n for n in self.node_ids if n in local]
            x, y = service.generate(fed.trainable, cfg.samples_per_class)
            answers = [local[n].probs_lse(x) for n in verifiers]
            per_owner, lse = [a[0] for a in answers], [a[1] for a in answers]
        else:
            verifiers, x, y, per_owner, lse = self._verify(grid, service, fed)
        self.contributors["verification"] = verifiers
        view = self._view(fed, verifiers)
        probs = self.combine(per_owner, view, y, per_owner, lse)
        agree = probs.argmax(1) == y
        # verification=false (an ablation): the student also learns from samples the
        # teachers label otherwise, with the teachers' labels as its targets
        keep = agree if cfg.verification else np.ones_like(agree)
        kept_classes = np.unique(y[keep])
        missing = np.setdiff1d(fed.trainable, kept_classes)
        if missing.size:
            log(WARNING, "no verified sample for %d class(es): %s", missing.size, missing.tolist())
        verification = {
            "enabled": cfg.verification,
            "generated": int(y.size),
            "kept": int(keep.sum()),
            "pass_rate": float(agree.mean()) if y.size else 0.0,
            "classes_without_samples": [int(c) for c in missing],
        }
        phases["verification"] = time.monotonic() - t
        log(INFO, "verification kept %d/%d generated samples", keep.sum(), y.size)

        # Student (Eq. 4) and, for an inductive teacher, classifier C (Eq. 7).
        t = time.monotonic()
        if not keep.any():
            raise RuntimeError(
                "no generated sample passed verification; train longer (rounds) or check alpha"
            )
        student = service.train_student(x[keep], probs[keep], self._epochs("student", progress))
        models: dict[str, torch.nn.Module] = {"student": student}
        if cfg.teacher == "inductive" and fed.unseen.size:
            xu, yu = service.generate(fed.unseen, cfg.samples_per_class)
            clf = service.train_classifier(
                np.concatenate([x[keep], xu]),
                np.concatenate([y[keep], yu]),
                self._epochs("classifier", progress),
            )
            models = {"classifier": clf, "student": student}
        phases["student"] = time.monotonic() - t

        t = time.monotonic()
        counts, teacher_counts, owner_counts, curves = self.evaluate(grid, models, fed.unseen)
        phases["evaluation"] = time.monotonic() - t
        space = self.zsl_space
        main_name = next(iter(models))
        extra = {n: zsl_gzsl(c, space) for n, c in counts.items() if n != main_name}
        curve = curves[main_name]
        calibration: dict[str, object] = {"applied": cfg.calibration}
        if curve:
            calibration["curve"] = curve
            calibration["selected"] = max(curve, key=lambda p: p["h"])["calibration"]
        orphaned = self.orphaned_classes()
        return RunResult(
            teacher=zsl_gzsl(teacher_counts, space),
            student=zsl_gzsl(counts[main_name], space),
            extra_models=extra,
            traffic=self.traffic,
            phases=phases,
            generator=service.generator,
            student_model=models[main_name],
            history=history,
            verification=verification,
            per_owner_teacher={str(n): zsl_gzsl(c, space) for n, c in owner_counts.items()},
            calibration=calibration,
            federation={
                "node_ids": self.node_ids,
                "owners_at_setup": len(self.node_ids) + len(self.dropped),
                "quorum": cfg.quorum,
                "dropped_node_ids": self.dropped,
                "dropped": self.drops,
                "failures": self.failures,
                "contributors": self.contributors,
                "generator_answers": {str(n): k for n, k in self.generator_answers.items()},
                "orphaned_classes": [int(c) for c in orphaned],
                "queries": {
                    str(n): {
                        "query_budget": self.budget.get(n, 0),
                        "queries_used": self.used.get(n, 0),
                        "skipped": self.skipped.get(n, {}),
                    }
                    for n in sorted(self.budget)
                },
                "coverage": [c.tolist() for c in fed.covered],
                "seen_classes": fed.seen.tolist(),
                "unseen_classes": fed.unseen.tolist(),
                "feature_dim": fed.dim,
                "evaluated_model": main_name,
                "zsl_label_space": space,
                "partition": cfg.partition,
                "ensemble_weighting": cfg.ensemble_weighting,
            },
        )

    def _epochs(
        self, phase: str, progress: Callable[[str, int, int, dict[str, float]], None] | None
    ) -> Callable[[int, float], None] | None:
        """Per-epoch loss of the student (or classifier) to the run's progress callback."""
        if progress is None:
            return None
        total = self.cfg.student_epochs
        return lambda epoch, loss: progress(phase, epoch + 1, total, {"loss": loss})

    def _check_budgets(self, verify_size: int) -> None:
        """Fail before any query when no owner could ever answer verification."""
        if any(self._left(n) >= verify_size for n in self.node_ids):
            return
        budgets = {n: self.budget[n] for n in self.node_ids}
        raise OwnerError(
            f"no owner's query-budget covers verification: it asks {verify_size} generated "
            f"samples (samples-per-class={self.cfg.samples_per_class} x "
            f"{verify_size // self.cfg.samples_per_class} classes) of each owner, whose "
            f"budgets are {budgets}; lower samples-per-class or raise query-budget in the "
            "owners' node config"
        )

    def _verify(
        self, grid: Grid, service: Service, fed: Federation
    ) -> tuple[list[int], np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Generate, then ask the owners with budget for all of it:
        (verifiers, x, y, probs per verifier, lse per verifier).

        Only classes those owners know are generated (the others would fail verification
        anyway). Chunks keep one message under protobuf's 2 GB limit; an owner must answer
        every chunk to count.
        """
        spc = self.cfg.samples_per_class
        asked = self._with_budget(spc * int(fed.trainable.size), "verification")
        if not asked:
            raise OwnerError(
                "no owner has query budget left for verification; lower rounds or "
                "samples-per-class, or raise query-budget in the owners' node config"
            )
        classes = np.intersect1d(fed.trainable, np.concatenate([self.covered[n] for n in asked]))
        x, y = service.generate(classes, spc)
        chunks: dict[int, list[np.ndarray]] = {n: [] for n in asked}
        lse: dict[int, list[np.ndarray]] = {n: [] for n in asked}
        for p in np.array_split(np.arange(y.size), -(-x.nbytes // MAX_MESSAGE_BYTES)):
            payload = {"arrays": {"x": x[p], "y": y[p]}}
            replies = self._ask_all(grid, P.VERIFY, [payload], phase="verification", nodes=asked)
            for node in list(asked):
                if node in replies:
                    chunks[node].append(replies[node][0].arrays["probs"])
                    lse[node].append(replies[node][0].arrays["lse"])
                else:  # failed, dropped or refused: its other chunks are of no use
                    asked.remove(node)
            if not asked:
                why = [f for f in self.failures if f["phase"] == "verification"]
                raise OwnerError(
                    f"no owner answered verification: {why}; see the owners' logs, or raise "
                    "query-budget if they refused for budget"
                )
        probs = [np.concatenate(chunks[n]) for n in asked]
        return asked, x, y, probs, [np.concatenate(lse[n]) for n in asked]

    @staticmethod
    def _pool_stats(fb: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
        return {
            "teacher_ce": float(np.mean(fb["ce"])),
            "regulariser": float(np.mean(fb["reg"])),
            "agreement": float(np.mean(fb["probs"].argmax(1) == y)),
        }

    # -- weights scenario -------------------------------------------------------------------

    def _local_oracles(self, setup: dict[int, P.Payload]) -> dict[int, FeedbackOracle]:
        """Copies of the owners' teachers (and KL statistics) sent once at set-up, by node."""
        oracles = {}
        for node, r in setup.items():
            if r.weights is None:
                raise OwnerError("scenario=weights but an owner sent no teacher weights")
            covered = r.arrays["covered"]
            teacher = classifier(int(r.scalars["dim"]), covered.size)
            load_numpy_state(teacher, r.weights)
            reg: Regulariser = Regulariser()
            if "reg_mean" in r.arrays:
                reg = KLRegulariser(
                    torch.from_numpy(r.arrays["reg_mean"]),
                    torch.from_numpy(r.arrays["reg_var"]),
                    torch.from_numpy(r.arrays["reg_classes"]),
                ).to(self.device)
            oracles[node] = FeedbackOracle(
                teacher.to(self.device).eval(),
                covered,
                self.classes.num_classes,
                reg,
                self.device,
            )
        return oracles

    def _local_round(
        self, service: Service, oracles: dict[int, FeedbackOracle], fed: Federation
    ) -> dict[str, float]:
        """steps-per-round updates, each with feedback computed on the current generator."""
        stats: dict[str, float] = {}
        for _ in range(self.cfg.steps_per_round):
            pool = service.make_pool(1)
            y = pool.labels
            answers = [
                o.feedback(pool.x, y, pool.batch_size, True, self.cfg.alpha, self._lse_grad)
                for o in oracles.values()
            ]
            fb = self.aggregate_feedback(answers, fed, y)
            stats = service.apply_feedback(pool, fb["probs"], fb["grad"])
            stats.update(self._pool_stats(fb, y))
        return stats
