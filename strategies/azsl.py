"""AZSLStrategy: the AI service's side of the conversation with the data owners.

Shaped like Flower's Message-API strategies: each phase has a ``configure_*`` that builds
the request (message kind, payloads, owners) and an ``aggregate_*`` that turns the owners'
answers into what the learner uses; :meth:`AZSLStrategy.start` runs Algorithm 1 as a few
short phases. Sending is :class:`~strategies.delivery.Delivery`'s job (transport + roster: re-sends,
skips, drops); generator feedback comes from a
:mod:`feedback source <strategies.sources>` (remote owners, or the teachers of scenario
``weights``). Round trips are the expensive part (≈0.1 s simulated, ≈10 s deployed), so
each carries a pool of ``steps-per-round`` generated batches.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower.common.config import (
    ConfigError,
    RunConfig,
    Scenario,
    TeacherSetting,
    Weighting,
    owner_groups,
    parse_calibration_grid,
)
from azsl_flower.common.metrics import ClassCounts, zsl_gzsl
from azsl_flower.common.models import state_to_numpy
from azsl_flower.common.semantics import ClassSide
from azsl_flower.service import ensemble
from azsl_flower.service.baseline import KLStatsFit, class_means, ncm_classifier
from azsl_flower.service.checkpoint import Checkpointer
from azsl_flower.service.generator import GeneratorSettings, GeneratorTrainer, Pool
from azsl_flower.service.results import RunResult
from azsl_flower.service.student import StudentSettings, train_models
from azsl_flower.service.tracking import OwnerTotals, RunEvents
from azsl_flower.wire import schema
from azsl_flower.wire.channels import ServiceSecurity
from strategies.delivery import Delivery
from strategies.faults import FaultInjector
from strategies.requests import Evaluation, Feedback, Request, Verified, sum_counts
from strategies.roster import OwnerError, Roster
from strategies.sources import FeedbackSource, LocalTeachers, RemoteOwners, VerifyAnswers
from strategies.transport import Transport

__all__ = ["AZSLStrategy", "OwnerError"]


def _privacy_declaration(reply: schema.Payload) -> dict[str, object]:
    """What an owner declared at set-up about its answers and their differential privacy."""
    try:
        declared = json.loads(str(reply.scalars["privacy"]))
    except ValueError:
        raise OwnerError("an owner's set-up privacy declaration is not JSON") from None
    eps = float(reply.scalars["epsilon"])  # type: ignore[arg-type]
    declared["epsilon"] = None if eps < 0 else eps
    declared["delta"] = float(reply.scalars["delta"])  # type: ignore[arg-type]
    return declared


def _per_batch(values: list[np.ndarray | None]) -> np.ndarray:
    """Owners' per-batch values averaged; NaN where no owner sent them (its mode says no)."""
    sent = [v for v in values if v is not None]
    return np.mean(sent, 0) if sent else np.full(1, np.nan, dtype=np.float32)


class AZSLStrategy:
    """Runs AZSL over a Flower Grid for any number of owners."""

    def __init__(
        self, cfg: RunConfig, classes: ClassSide, device: torch.device, security: ServiceSecurity
    ) -> None:
        self.cfg, self.classes, self.device = cfg, classes, device
        self.settings = cfg.owner_settings()
        faults = None
        if cfg.fault_tamper > 0 or cfg.fault_replay > 0:
            if security.suite == "none":
                raise ConfigError("fault-tamper/fault-replay need encryption (not 'none')")
            faults = FaultInjector(cfg.fault_tamper, cfg.fault_replay, cfg.seed)
        self.transport = Transport(security, cfg.timeout, cfg.poll_interval, faults)
        self.roster = Roster(cfg.quorum)
        self.delivery = Delivery(self.transport, self.roster, self.settings, cfg.max_retries)
        self.checkpoint = Checkpointer(cfg)
        self.privacy: dict[int, dict[str, object]] = {}  # what each owner declared at set-up
        self._fit: KLStatsFit | None = None  # the closed-form fit of regulariser gradients

    # -- set-up -----------------------------------------------------------------------------

    def configure_setup(self, grid: Grid) -> Request:
        """Ask every connected node to declare its feature size, coverage and budget."""
        nodes = sorted(grid.get_node_ids())
        if self.cfg.partition == "explicit" and nodes:  # before any message
            owner_groups(self.cfg.owner_classes, len(nodes), self.classes.num_classes)
        self.roster.start(nodes)
        return Request(schema.SETUP, "setup", [{}], nodes)

    def aggregate_setup(self, answers: dict[int, schema.Payload]) -> ensemble.Declarations:
        """Check the owners' declarations agree; record coverage and query budgets."""
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
        faults = self.transport.faults
        if faults is not None:
            if not all(bool(r.scalars["simulated"]) for r in replies):
                raise ConfigError(
                    "fault-tamper/fault-replay are for simulations only; an owner runs deployed"
                )
            faults.enabled = True
        self.privacy = {n: _privacy_declaration(r) for n, r in answers.items()}
        seen = np.unique(np.concatenate([r.arrays["seen"] for r in replies]))
        unseen = np.unique(np.concatenate([r.arrays["unseen"] for r in replies]))
        return self.roster.admit(
            covered={n: r.arrays["covered"] for n, r in answers.items()},
            budgets={n: int(r.scalars["query_budget"]) for n, r in answers.items()},
            seen=seen,
            unseen=np.setdiff1d(unseen, seen),
            dim=dims.pop(),
            num_classes=self.classes.num_classes,
        )

    # -- generator feedback -----------------------------------------------------------------

    @property
    def lse_grad(self) -> bool:
        """Ask owners for grad(lse) too: only the joint ensemble in white-box needs it, and
        only with several owners (one owner's joint gradient is its own gradient)."""
        cfg = self.cfg
        joint = cfg.ensemble_weighting is Weighting.JOINT and cfg.scenario.whitebox
        return joint and len(self.roster.live) > 1

    def configure_feedback(self, pool: Pool, nodes: list[int], phase: str) -> Request:
        payload = {
            "arrays": {"x": pool.x, "y": pool.labels},
            "scalars": {"batch_size": pool.batch_size, "lse_grad": self.lse_grad},
        }
        return Request(schema.FEEDBACK, phase, [payload], nodes)

    def aggregate_feedback(
        self, answers: dict[int, dict[str, np.ndarray]], y: np.ndarray
    ) -> Feedback:
        """Combine the answering owners' feedback on one pool by ``ensemble-weighting``."""
        coverage = self.roster.declarations(list(answers)).coverage
        arrays = list(answers.values())
        probs = [a["probs"] for a in arrays]
        lse = [a["lse"] for a in arrays] if all("lse" in a for a in arrays) else None
        # strict black-box (or regulariser-answer without gradient): no gradient on the wire
        grads = [a.get("grad", np.zeros((y.size, 0), np.float32)) for a in arrays]
        mode = self.cfg.ensemble_weighting
        if mode is Weighting.JOINT:
            sent = all("grad_lse" in a for a in arrays)
            if self.lse_grad and not sent and len(arrays) > 1:
                raise OwnerError("ensemble-weighting=joint: an owner sent no grad_lse")
            grads_lse = [a["grad_lse"] for a in arrays] if sent else None
            grad = ensemble.joint_gradient(grads, grads_lse, probs, lse, coverage, y)  # type: ignore[arg-type]
        else:
            grad = ensemble.combine(grads, coverage, y, probs, mode, lse)
        combined = ensemble.combine(probs, coverage, y, probs, mode, lse)
        return Feedback(
            probs=combined,
            grad=grad if grad.shape[1] else None,
            ce=_per_batch([a.get("ce") for a in arrays]),
            reg=_per_batch([a.get("reg") for a in arrays]),
        )

    # -- verification -----------------------------------------------------------------------

    def configure_verify(self, x: np.ndarray, y: np.ndarray, nodes: list[int]) -> Request:
        return Request(schema.VERIFY, "verification", [{"arrays": {"x": x, "y": y}}], nodes)

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
        return Verified(x, y, probs, keep, report)

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
        return Request(schema.EVALUATE, "evaluation", payloads, list(self.roster.live))

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

    # -- Algorithm 1 ------------------------------------------------------------------------

    def start(self, grid: Grid, events: RunEvents | None = None) -> RunResult:
        """Set-up, generator rounds, verification, student (and classifier C), evaluation."""
        events = events or RunEvents()
        t0, phases = time.monotonic(), {}
        setup = {n: r[0] for n, r in self.delivery.ask(grid, self.configure_setup(grid)).items()}
        declared = self.aggregate_setup(setup)
        self.roster.contributors["setup"] = list(setup)
        trainer = GeneratorTrainer(
            GeneratorSettings.from_config(self.cfg), self.classes.semantics, declared, self.device
        )
        source = self._source(grid, setup, declared)
        phases["setup"] = time.monotonic() - t0
        log(
            INFO,
            "AZSL: %d owner(s), feature dim %d, %d classes (%d seen, %d unseen), scenario %s",
            len(self.roster.live),
            declared.dim,
            declared.num_classes,
            declared.seen.size,
            declared.unseen.size,
            self.cfg.scenario,
        )
        t = time.monotonic()
        history, resumed = self._train_generator(source, trainer, events)
        phases["generator"] = time.monotonic() - t
        t = time.monotonic()
        trainable = self.roster.declarations().trainable
        answers = source.verify(trainer, trainable)
        self.roster.contributors["verification"] = answers.nodes
        verified = self.aggregate_verify(answers, trainable)
        phases["verification"] = time.monotonic() - t
        t = time.monotonic()
        models = self._train_models(trainer, verified, declared, events)
        phases["student"] = time.monotonic() - t
        t = time.monotonic()
        models |= self._baselines(source, verified)
        request = self.configure_evaluate(models, declared.unseen)
        replies = self.delivery.ask(grid, request)
        evaluation = self.aggregate_evaluate(replies, list(models))
        self.roster.contributors["evaluation"] = list(replies)
        phases["evaluation"] = time.monotonic() - t
        result = self._result(evaluation, models, trainer, verified, history, phases)
        result.resumed_from_round = resumed
        result.wall_seconds = time.monotonic() - t0
        events.finished(result)
        return result

    def _source(
        self, grid: Grid, setup: dict[int, schema.Payload], declared: ensemble.Declarations
    ) -> FeedbackSource:
        """Remote owners (budgets checked before any query), or scenario weights' teachers."""
        if self.cfg.scenario is Scenario.WEIGHTS:
            num_classes = self.classes.num_classes
            return LocalTeachers.from_setup(
                setup, num_classes, self.device, self.cfg, self.lse_grad
            )
        verify_size = self.cfg.samples_per_class * int(declared.trainable.size)
        self.roster.check_budgets(verify_size, self.cfg.samples_per_class)
        return RemoteOwners(self, self.delivery, grid, self.cfg, verify_size)

    def _train_generator(
        self, source: FeedbackSource, trainer: GeneratorTrainer, events: RunEvents
    ) -> tuple[list[dict[str, float]], int | None]:
        """Generator rounds (resumed from a checkpoint when one fits); (history, resumed from)."""
        cfg, roster = self.cfg, self.roster
        history: list[dict[str, float]] = []
        first, resumed = 1, None
        saved = self.checkpoint.load()
        if saved is not None:  # a crashed or stopped run with these settings: go on from it
            trainer.load_state_dict(saved["service"])
            history = list(saved["extra"]["history"])
            roster.generator_answers = {int(n): k for n, k in saved["extra"]["answers"].items()}
            first = resumed = int(saved["round"]) + 1
        for r in range(first, cfg.rounds + 1):
            step = source.feedback_round(trainer, r)
            if step is None:
                break
            stats: dict[str, float] = {}
            answered: set[int] = set()
            for pool, answers in step:
                if not answers:
                    continue
                answered |= set(answers)
                fb = self.aggregate_feedback(answers, pool.labels)
                self._fit_released(pool, fb.grad, list(answers))
                stats = trainer.apply_feedback(pool, fb.probs, fb.grad) | fb.stats(pool.labels)
            if not answered:
                log(WARNING, "generator round %d: no owner answered; no update", r)
                continue
            for n in answered:
                roster.generator_answers[n] = roster.generator_answers.get(n, 0) + 1
            stats |= {"owners": len(answered), "round": r}
            history.append(stats)
            if self.checkpoint.due(r):
                answers_by_node = {str(n): k for n, k in roster.generator_answers.items()}
                extra = {"history": history, "answers": answers_by_node}
                self.checkpoint.save(r, trainer.state_dict(), extra)
            events.round_done(r, cfg.rounds, stats, self._owner_totals())
        roster.contributors["generator"] = sorted(roster.generator_answers)
        return history, resumed

    # -- the nearest-class-mean baseline -----------------------------------------------------

    @property
    def released(self) -> str:
        """What the owners' answers in this run's mode release about their class statistics."""
        cfg = self.cfg
        if cfg.regulariser != "kl" or cfg.regulariser_answer == "none":
            return "none"
        dp = any(
            d.get("mechanisms") and any("statistics" in str(m.get("name")) for m in d["mechanisms"])
            for d in self.privacy.values()
        )  # type: ignore[union-attr]
        kind = "DP statistics" if dp else "exact statistics"
        if cfg.scenario is Scenario.WEIGHTS:
            return f"{kind}, sent at set-up"
        if cfg.regulariser_answer != "gradient":
            return "none"  # the value alone needs many crafted queries (see the audit)
        if cfg.scenario is Scenario.BLACKBOX:
            return f"{kind}, recovered from the regulariser gradient (closed-form fit)"
        return f"{kind} mixed with the teacher's gradient (naive closed-form fit)"

    def _fit_released(self, pool: Pool, grad: np.ndarray | None, nodes: list[int]) -> None:
        """Feed the closed-form fit with what this pool's answers revealed (if anything)."""
        if grad is None or "recover" not in self.released and "naive" not in self.released:
            return
        if self._fit is None:
            self._fit = KLStatsFit(self.classes.num_classes, pool.x.shape[1])
        covered = np.unique(np.concatenate([self.roster.covered[n] for n in nodes]))
        self._fit.add(pool.x, pool.labels, grad, self.cfg.alpha, pool.batch_size, covered)

    def _baselines(self, source: FeedbackSource, verified: Verified) -> dict[str, torch.nn.Module]:
        """NCM on the released statistics (if any) and on the verified generated means."""
        num_classes, out = self.classes.num_classes, {}
        stats = None
        if isinstance(source, LocalTeachers):
            stats = source.released_means()
        elif self._fit is not None:
            mean, _, classes = self._fit.estimate()
            stats = (mean, classes) if classes.size else None
        if stats is not None:
            model = ncm_classifier(stats[0], stats[1], num_classes)
            if model is not None:
                out["ncm-released"] = model.to(self.device)
        keep = verified.keep
        if keep.any():
            means, classes = class_means(verified.x[keep], verified.y[keep], num_classes)
            model = ncm_classifier(means, classes, num_classes)
            if model is not None:
                out["ncm-generated"] = model.to(self.device)
        return out

    def _train_models(
        self,
        trainer: GeneratorTrainer,
        verified: Verified,
        declared: ensemble.Declarations,
        events: RunEvents,
    ) -> dict[str, torch.nn.Module]:
        """Student (Eq. 4); inductive: also classifier C (Eq. 7) on generated unseen samples."""
        keep = verified.keep
        if not keep.any():
            raise RuntimeError(
                "no generated sample passed verification; train longer (rounds) or check alpha"
            )
        unseen = None
        if self.cfg.teacher is TeacherSetting.INDUCTIVE and declared.unseen.size:
            unseen = trainer.generate(declared.unseen, self.cfg.samples_per_class)
        return train_models(
            (verified.x[keep], verified.y[keep], verified.probs[keep]),
            unseen,
            declared.num_classes,
            StudentSettings.from_config(self.cfg),
            self.device,
            events.epoch_done,
        )

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

    def _result(
        self,
        evaluation: Evaluation,
        models: dict[str, torch.nn.Module],
        trainer: GeneratorTrainer,
        verified: Verified,
        history: list[dict[str, float]],
        phases: dict[str, float],
    ) -> RunResult:
        cfg, space = self.cfg, self.cfg.teacher.zsl_space
        main = next(iter(models))
        curve = evaluation.curves[main]
        calibration: dict[str, object] = {"applied": cfg.calibration}
        if curve:
            calibration["curve"] = curve
            calibration["selected"] = max(curve, key=lambda p: p["h"])["calibration"]
        faults = self.transport.faults
        return RunResult(
            config=cfg,
            device=str(self.device),
            teacher=zsl_gzsl(evaluation.teacher, space),
            student=zsl_gzsl(evaluation.models[main], space),
            other_models={n: zsl_gzsl(c, space) for n, c in evaluation.models.items() if n != main},
            per_owner_teacher={str(n): zsl_gzsl(c, space) for n, c in evaluation.per_owner.items()},
            calibration=calibration,
            verification=verified.report,
            federation=self.roster.report(main, space, cfg.partition, str(cfg.ensemble_weighting)),
            history=history,
            traffic=self.transport.traffic,
            crypto=self.transport.security.stats,
            suite=self.transport.security.suite,
            faults_injected=faults.injected if faults is not None else {},
            phase_seconds=phases,
            wall_seconds=0.0,
            resumed_from_round=None,
            models={"generator": trainer.generator, "student": models[main]},
            privacy={str(n): d for n, d in self.privacy.items()},
            baseline={"released": self.released},
        )
