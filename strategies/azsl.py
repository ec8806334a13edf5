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
from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower import protocol as P
from azsl_flower.config import RunConfig
from azsl_flower.feedback import FeedbackOracle, KLRegulariser, Regulariser
from azsl_flower.metrics import ClassCounts, zsl_gzsl
from azsl_flower.models import classifier, load_numpy_state, state_to_numpy
from azsl_flower.semantics import ClassSide
from azsl_flower.service import Federation, Pool, Service, combine_over_owners

__all__ = ["AZSLStrategy", "OwnerError", "RunResult"]

MAX_MESSAGE_BYTES = 64 * 2**20  # generated features per verification message


class OwnerError(RuntimeError):
    """An owner answered with an error or did not answer in time."""


@dataclass
class Traffic:
    rounds: int = 0
    messages: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


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

    def __init__(self, cfg: RunConfig, classes: ClassSide, device: torch.device) -> None:
        self.cfg, self.classes, self.device = cfg, classes, device
        self.settings = cfg.owner_settings()
        self.traffic = Traffic()
        self.node_ids: list[int] = []

    # -- transport --------------------------------------------------------------------------

    def _round_trip(self, grid: Grid, messages: list[Message], kind: P.Kind) -> list[RecordDict]:
        """Push all messages at once, poll for every reply; one round trip, counted."""
        self.traffic.rounds += 1
        self.traffic.messages += len(messages)
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
        out = []
        for mid in ids:
            reply = replies[mid]
            if reply.has_error():
                raise OwnerError(
                    f"owner node {reply.metadata.src_node_id} failed on {kind.message_type}: "
                    f"{reply.error.reason}"
                )
            self.traffic.bytes_received += P.payload_nbytes(reply.content)
            out.append(reply.content)
        return out

    def _ask_all(
        self, grid: Grid, kind: P.Kind, payloads: list[dict[str, object]] | None = None
    ) -> list[list[P.Payload]]:
        """Every payload to every owner in one round trip; replies[node][payload], decoded."""
        payloads = payloads if payloads is not None else [{}]
        contents = [P.encode(kind, "request", settings=self.settings, **p) for p in payloads]  # type: ignore[arg-type]
        msgs = [
            Message(content=c, dst_node_id=n, message_type=kind.message_type)
            for n in self.node_ids
            for c in contents
        ]
        flat = [P.decode(kind, "reply", rd) for rd in self._round_trip(grid, msgs, kind)]
        k = len(contents)
        return [flat[i * k : (i + 1) * k] for i in range(len(self.node_ids))]

    # -- set-up -----------------------------------------------------------------------------

    def configure_setup(self, grid: Grid) -> list[int]:
        nodes = sorted(grid.get_node_ids())
        if not nodes:
            raise OwnerError("no data owner (SuperNode) is connected")
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
        seen = np.unique(np.concatenate([r.arrays["seen"] for r in replies]))
        unseen = np.unique(np.concatenate([r.arrays["unseen"] for r in replies]))
        return Federation(
            dim=dims.pop(),
            num_classes=self.classes.num_classes,
            covered=[r.arrays["covered"] for r in replies],
            seen=seen,
            unseen=np.setdiff1d(unseen, seen),
        )

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
        cov = fed.coverage
        return {
            "probs": combine_over_owners([a["probs"] for a in answers], cov, y),
            "grad": combine_over_owners([a["grad"] for a in answers], cov, y),
            "ce": np.mean([a["ce"] for a in answers], 0),
            "reg": np.mean([a["reg"] for a in answers], 0),
        }

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
        replies = self._ask_all(grid, P.EVALUATE, payloads)
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
        setup = [node[0] for node in self._ask_all(grid, P.SETUP)]
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
                    for node in self._ask_all(grid, P.FEEDBACK, [self.configure_feedback(pool)])
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
            probs = combine_over_owners([o.probs(x) for o in local], fed.coverage, y)
        else:
            # several messages per owner keep each under MAX_MESSAGE_BYTES; still one round trip
            parts = np.array_split(np.arange(y.size), -(-x.nbytes // MAX_MESSAGE_BYTES))
            payloads = [{"arrays": {"x": x[p], "y": y[p]}} for p in parts]
            replies = self._ask_all(grid, P.VERIFY, payloads)
            per_owner = [np.concatenate([r.arrays["probs"] for r in node]) for node in replies]
            probs = combine_over_owners(per_owner, fed.coverage, y)
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
                "coverage": [c.tolist() for c in fed.covered],
                "seen_classes": fed.seen.tolist(),
                "unseen_classes": fed.unseen.tolist(),
                "feature_dim": fed.dim,
                "evaluated_model": main_name,
                "zsl_label_space": space,
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
