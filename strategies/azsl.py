"""AZSLStrategy: the AI service's side of the conversation with the data owners.

Shaped like Flower's own strategies: each phase has a ``configure_*`` that builds the
messages and an ``aggregate_*`` that turns replies into something the learner can use;
``start`` runs Algorithm 1. Round trips are the expensive part (≈0.1 s simulated, ≈10 s
deployed), so each one carries a pool of ``steps-per-round`` generated batches and its
answers drive that many generator updates; messages are pushed together and replies
polled at ``poll-interval``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower import protocol as P
from azsl_flower.config import ConfigError, RunConfig, parse_owner_classes
from azsl_flower.crypto import RejectedError
from azsl_flower.faults import FaultInjector
from azsl_flower.feedback import FeedbackOracle, KLRegulariser, Regulariser
from azsl_flower.metrics import ClassCounts, zsl_gzsl
from azsl_flower.models import classifier, load_numpy_state, state_to_numpy
from azsl_flower.secure import ServiceSecurity
from azsl_flower.semantics import ClassSide
from azsl_flower.service import Federation, Pool, Service, combine_over_owners

__all__ = ["AZSLStrategy", "OwnerError", "RunResult"]

MAX_MESSAGE_BYTES = 2**30  # generated features per verification round trip


class OwnerError(RuntimeError):
    """An owner answered with an error or did not answer in time."""


@dataclass
class Traffic:
    rounds: int = 0
    messages: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retries: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    rejections: list[dict[str, object]] = field(default_factory=list)


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
        self.node_ids: list[int] = []
        self.dropped: list[int] = []
        self.covered: dict[int, np.ndarray] = {}  # node -> classes its teacher knows
        self.fed: Federation | None = None
        self.faults: FaultInjector | None = None
        if cfg.fault_tamper > 0 or cfg.fault_replay > 0:
            if security.suite == "none":
                raise ConfigError("fault-tamper/fault-replay need encryption (not 'none')")
            self.faults = FaultInjector(cfg.fault_tamper, cfg.fault_replay, cfg.seed)

    # -- transport --------------------------------------------------------------------------

    def _round_trip(self, grid: Grid, messages: list[Message], kind: P.Kind) -> list[Message]:
        """Push all messages at once, poll for every reply; one round trip, counted."""
        self.traffic.rounds += 1
        self.traffic.messages += len(messages)
        if self.faults is not None:
            messages = [self.faults.outgoing(m) for m in messages]
        self.traffic.bytes_sent += sum(P.payload_nbytes(m.content) for m in messages)
        ids = [i for i in grid.push_messages(messages) if i]
        if len(ids) != len(messages):
            raise OwnerError(
                f"{kind.message_type}: only {len(ids)}/{len(messages)} messages queued"
            )
        pending, replies = set(ids), {}
        deadline = time.monotonic() + self.cfg.timeout
        while pending:
            for reply in grid.pull_messages(list(pending)):
                replies[reply.metadata.reply_to_message_id] = reply
                pending.discard(reply.metadata.reply_to_message_id)
            if pending:
                if time.monotonic() > deadline:
                    raise OwnerError(
                        f"{kind.message_type}: {len(pending)} owner(s) did not answer within "
                        f"timeout={self.cfg.timeout}s"
                    )
                time.sleep(self.cfg.poll_interval)
        out = [replies[mid] for mid in ids]
        if self.faults is not None:
            out = [self.faults.incoming(r) for r in out]
        for reply in out:
            if not reply.has_error():
                self.traffic.bytes_received += P.payload_nbytes(reply.content)
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

    def _ask_all(
        self,
        grid: Grid,
        kind: P.Kind,
        payloads: list[dict[str, object]] | None = None,
        phase: str = "",
    ) -> list[list[P.Payload]]:
        """Every payload to every owner, sealed in one message per owner; replies[node][payload].

        A message refused by either end (tampered, replayed, wrong key...) is re-sent, freshly
        sealed, in a follow-up round trip up to ``max-retries`` times; an owner that still
        fails is dropped and the run goes on with the others.
        """
        payloads = payloads if payloads is not None else [{}]
        parts = [P.encode(kind, "request", settings=self.settings, **p) for p in payloads]  # type: ignore[arg-type]
        phase = phase or kind.message_type
        answers: dict[int, list[P.Payload]] = {}
        todo = list(self.node_ids)
        for attempt in range(self.cfg.max_retries + 1):
            unreachable = [n for n in todo if not self.security.addressable(n)]
            if unreachable:  # no allow-listed key left for it: not one of our owners
                self._drop(unreachable, phase)
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
                if reply.has_error():
                    reason = P.parse_rejection(reply.error.code, reply.error.reason)
                    if reason is None:
                        raise OwnerError(
                            f"owner node {node} failed on {kind.message_type}: {reply.error.reason}"
                        )
                    self._reject(node, kind, phase, "owner", reason, reply.error.reason)
                    failed.append(node)
                    continue
                try:
                    opened = self.security.open(node, kind.message_type, reply.content)
                    if len(opened) != len(parts):
                        raise RejectedError(
                            "malformed", f"{len(opened)} answers to {len(parts)} payloads"
                        )
                except RejectedError as exc:
                    self._reject(node, kind, phase, "service", exc.reason, str(exc))
                    failed.append(node)
                    continue
                answers[node] = [P.decode(kind, "reply", rd) for rd in opened]
            todo = failed
            if not todo:
                break
            if attempt < self.cfg.max_retries:
                self.traffic.retries += len(todo)
        if todo:
            self._drop(todo, phase)
        return [answers[n] for n in self.node_ids]

    def _drop(self, nodes: list[int], phase: str) -> None:
        for n in nodes:
            log(WARNING, "dropping owner node %d: its messages kept being rejected (%s)", n, phase)
        self.dropped += nodes
        self.node_ids = [n for n in self.node_ids if n not in nodes]
        if not self.node_ids:
            raise OwnerError(
                f"no owner left in {phase}: every owner's messages were rejected "
                f"({self.traffic.rejected}); check keys (service-key, owner-keys, owner-key, "
                "service-pub) and the network path"
            )
        if self.fed is not None:  # coverage follows the owners still in the run
            self.fed.covered = [self.covered[n] for n in self.node_ids]

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
        return nodes

    def aggregate_setup(self, replies: list[P.Payload]) -> Federation:
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
        self.covered = {n: r.arrays["covered"] for n, r in zip(self.node_ids, replies, strict=True)}
        seen = np.unique(np.concatenate([r.arrays["seen"] for r in replies]))
        unseen = np.unique(np.concatenate([r.arrays["unseen"] for r in replies]))
        self.fed = Federation(
            dim=dims.pop(),
            num_classes=self.classes.num_classes,
            covered=[r.arrays["covered"] for r in replies],
            seen=seen,
            unseen=np.setdiff1d(unseen, seen),
        )
        return self.fed

    # -- feedback ---------------------------------------------------------------------------

    def configure_feedback(self, pool: Pool) -> dict[str, object]:
        return {
            "arrays": {"x": pool.x, "y": pool.labels},
            "scalars": {"batch_size": pool.batch_size},
        }

    def aggregate_feedback(
        self, replies: list[P.Payload] | list[dict[str, np.ndarray]], fed: Federation, y: np.ndarray
    ) -> dict[str, np.ndarray]:
        answers = [r.arrays if isinstance(r, P.Payload) else r for r in replies]
        probs = [a["probs"] for a in answers]
        return {
            "probs": self.combine(probs, fed, y, probs),
            "grad": self.combine([a["grad"] for a in answers], fed, y, probs),
            "ce": np.mean([a["ce"] for a in answers], 0),
            "reg": np.mean([a["reg"] for a in answers], 0),
        }

    def combine(
        self, per_owner: list[np.ndarray], fed: Federation, y: np.ndarray, probs: list[np.ndarray]
    ) -> np.ndarray:
        """One answer per sample from every owner's, by the run's ensemble-weighting.

        The same rule combines feedback, verification and (through verification) the
        student's targets, so all three agree on which owner speaks for a class.
        """
        return combine_over_owners(per_owner, fed.coverage, y, probs, self.cfg.ensemble_weighting)

    # -- evaluation -------------------------------------------------------------------------

    def aggregate_evaluate(self, replies: list[P.Payload], who: str) -> ClassCounts:
        total = None
        for r in replies:
            c = ClassCounts(*(r.arrays[f"{who}_{f}"] for f in ClassCounts.__dataclass_fields__))
            total = c if total is None else total + c
        assert total is not None
        return total

    def evaluate(
        self, grid: Grid, models: dict[str, torch.nn.Module], unseen: np.ndarray
    ) -> tuple[dict[str, ClassCounts], ClassCounts]:
        """Send every model to every owner in one round trip; sum their per-class counts."""
        payloads = [
            {"arrays": {"unseen": unseen.astype(np.int64)}, "weights": state_to_numpy(m)}
            for m in models.values()
        ]
        replies = self._ask_all(grid, P.EVALUATE, payloads, phase="evaluation")
        per_model = {
            name: self.aggregate_evaluate([node[i] for node in replies], "model")
            for i, name in enumerate(models)
        }
        return per_model, self.aggregate_evaluate([node[0] for node in replies], "teacher")

    # -- Algorithm 1 ------------------------------------------------------------------------

    def start(
        self, grid: Grid, progress: Callable[[str, int, int, dict[str, float]], None] | None = None
    ) -> RunResult:
        cfg, phases = self.cfg, {}
        t0 = time.monotonic()
        self.configure_setup(grid)
        setup = [node[0] for node in self._ask_all(grid, P.SETUP, phase="setup")]
        fed = self.aggregate_setup(setup)
        service = Service(cfg, self.classes, fed, self.device)
        local = self._local_oracles(setup) if cfg.scenario == "weights" else None
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
        for r in range(1, cfg.rounds + 1):
            if local is not None:  # weights scenario: fresh gradients, no messages
                stats = self._local_round(service, local, fed)
            else:
                pool = service.make_pool(cfg.steps_per_round)
                replies = [
                    node[0]
                    for node in self._ask_all(
                        grid, P.FEEDBACK, [self.configure_feedback(pool)], phase=f"generator-{r}"
                    )
                ]
                fb = self.aggregate_feedback(replies, fed, pool.labels)
                stats = service.apply_feedback(pool, fb["probs"], fb["grad"])
                stats.update(self._pool_stats(fb, pool.labels))
            stats["round"] = r
            history.append(stats)
            if progress:
                progress("generator", r, cfg.rounds, stats)
        phases["generator"] = time.monotonic() - t

        # Verification (Eq. 3): keep generated samples the teachers label as intended.
        t = time.monotonic()
        x, y = service.generate(fed.trainable, cfg.samples_per_class)
        if local is not None:
            per_owner = [o.probs(x) for o in local]
            probs = self.combine(per_owner, fed, y, per_owner)
        else:
            # one round trip unless the features outgrow a protobuf message (2 GB)
            chunks: dict[int, list[np.ndarray]] = {}
            for p in np.array_split(np.arange(y.size), -(-x.nbytes // MAX_MESSAGE_BYTES)):
                payload = {"arrays": {"x": x[p], "y": y[p]}}
                replies = self._ask_all(grid, P.VERIFY, [payload], phase="verification")
                for node, answer in zip(self.node_ids, replies, strict=True):
                    chunks.setdefault(node, []).append(answer[0].arrays["probs"])
            per_owner = [np.concatenate(chunks[n]) for n in self.node_ids]
            probs = self.combine(per_owner, fed, y, per_owner)
        keep = probs.argmax(1) == y
        kept_classes = np.unique(y[keep])
        missing = np.setdiff1d(fed.trainable, kept_classes)
        if missing.size:
            log(WARNING, "no verified sample for %d class(es): %s", missing.size, missing.tolist())
        verification = {
            "generated": int(y.size),
            "kept": int(keep.sum()),
            "pass_rate": float(keep.mean()),
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
        student = service.train_student(x[keep], probs[keep])
        models: dict[str, torch.nn.Module] = {"student": student}
        if cfg.teacher == "inductive" and fed.unseen.size:
            xu, yu = service.generate(fed.unseen, cfg.samples_per_class)
            clf = service.train_classifier(
                np.concatenate([x[keep], xu]), np.concatenate([y[keep], yu])
            )
            models = {"classifier": clf, "student": student}
        phases["student"] = time.monotonic() - t

        t = time.monotonic()
        counts, teacher_counts = self.evaluate(grid, models, fed.unseen)
        phases["evaluation"] = time.monotonic() - t
        space = "unseen" if cfg.teacher == "inductive" else "all"
        main_name = next(iter(models))
        extra = {n: zsl_gzsl(c, space) for n, c in counts.items() if n != main_name}
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
            federation={
                "node_ids": self.node_ids,
                "dropped_node_ids": self.dropped,
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

    @staticmethod
    def _pool_stats(fb: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
        return {
            "teacher_ce": float(np.mean(fb["ce"])),
            "regulariser": float(np.mean(fb["reg"])),
            "agreement": float(np.mean(fb["probs"].argmax(1) == y)),
        }

    # -- weights scenario -------------------------------------------------------------------

    def _local_oracles(self, setup: list[P.Payload]) -> list[FeedbackOracle]:
        """Copies of the owners' teachers (and KL statistics) sent once at set-up."""
        oracles = []
        for r in setup:
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
            oracles.append(
                FeedbackOracle(
                    teacher.to(self.device).eval(),
                    covered,
                    self.classes.num_classes,
                    reg,
                    self.device,
                )
            )
        return oracles

    def _local_round(
        self, service: Service, oracles: list[FeedbackOracle], fed: Federation
    ) -> dict[str, float]:
        """steps-per-round updates, each with feedback computed on the current generator."""
        stats: dict[str, float] = {}
        for _ in range(self.cfg.steps_per_round):
            pool = service.make_pool(1)
            y = pool.labels
            answers = [
                o.feedback(pool.x, y, pool.batch_size, True, self.cfg.alpha) for o in oracles
            ]
            fb = self.aggregate_feedback(answers, fed, y)
            stats = service.apply_feedback(pool, fb["probs"], fb["grad"])
            stats.update(self._pool_stats(fb, y))
        return stats
