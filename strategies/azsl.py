"""AZSLStrategy: the AI service's side of the conversation with the data owners.

Shaped like Flower's Message-API strategies: each phase has a ``configure_*`` that builds
the request (message kind, payloads, owners) and an ``aggregate_*`` that turns the owners'
answers into what the learner uses; the method runs Algorithm 1 as a few short phases
(set-up and evaluation are :meth:`strategies.methods.Method.start`'s, the rounds between
them :meth:`AZSLStrategy.learn`'s). Sending is :class:`~strategies.delivery.Delivery`'s
job (transport + roster: re-sends, skips, drops); generator feedback comes from a
:mod:`feedback source <strategies.sources>` (remote owners, or the teachers of scenario
``weights``). Round trips are the expensive part (≈0.1 s simulated, ≈10 s deployed), so
each carries a pool of ``steps-per-round`` generated batches.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower.common.config import (
    Scenario,
    TeacherSetting,
    Weighting,
)
from azsl_flower.common.modes import feedback_fields, parse_teacher_answer
from azsl_flower.common.regularisers import regulariser_kind
from azsl_flower.service import ensemble
from azsl_flower.service.baseline import (
    REVEALED_FITS,
    StatisticsFit,
    class_means,
    lda_classifier,
    ncm_classifier,
)
from azsl_flower.service.deliver import delivered_name
from azsl_flower.service.generator import GeneratorSettings, GeneratorTrainer, Pool
from azsl_flower.service.local_regulariser import local_regularisers
from azsl_flower.service.student import StudentSettings, gaussian_samples, train_models
from azsl_flower.service.tracking import RunEvents
from azsl_flower.wire import schema
from strategies.checks import check_feedback
from strategies.methods import Learnt, Method
from strategies.requests import Feedback, Request, Verified
from strategies.roster import OwnerError
from strategies.sources import FeedbackSource, LocalTeachers, RemoteOwners, SourceSettings

__all__ = ["AZSLStrategy", "OwnerError"]


def _per_batch(values: list[np.ndarray | None]) -> np.ndarray:
    """Owners' per-batch values averaged; NaN where no owner sent them (its mode says no)."""
    sent = [v for v in values if v is not None]
    return np.mean(sent, 0) if sent else np.full(1, np.nan, dtype=np.float32)


class AZSLStrategy(Method):
    """Runs AZSL over a Flower Grid for any number of owners (set-up, verification and
    evaluation are :class:`~strategies.phases.OwnerPhases`')."""

    _fit: StatisticsFit | None = None  # the closed-form fit of what the regulariser revealed

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
        teacher = parse_teacher_answer(self.cfg.asked_teacher_answer)
        fields = feedback_fields(
            teacher, self.cfg.regulariser_answer, self.cfg.scenario.whitebox, self.lse_grad
        )
        check = check_feedback(
            int(pool.labels.size),
            pool.batch_size,
            self.roster.dim,
            self.classes.num_classes,
            self.roster.covered,
            fields,
            full=teacher.whole,
        )
        return Request(schema.FEEDBACK, phase, [payload], nodes, check)

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

    # -- Algorithm 1 ------------------------------------------------------------------------

    def learn(
        self,
        *,
        grid: Grid,
        setup: dict[int, schema.Payload],
        declared: ensemble.Declarations,
        events: RunEvents,
    ) -> Learnt:
        """Generator rounds, verification, student (and classifier C), the NCM baselines."""
        t0, phases = time.monotonic(), {}
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
        warm, contributors = self.warm_start(grid=grid, trainer=trainer, declared=declared)
        if warm:
            phases["warm_start"] = time.monotonic() - t
        t = time.monotonic()
        history, resumed = self._train_generator(source, trainer, events)
        contributors["generator"] = sorted(self.roster.generator_answers)
        phases["generator"] = time.monotonic() - t
        t = time.monotonic()
        trainable = self.roster.declarations().trainable
        answers = source.verify(trainer, trainable)
        contributors["verification"] = answers.nodes
        verified = self.aggregate_verify(answers, trainable)
        phases["verification"] = time.monotonic() - t
        t = time.monotonic()
        released = self._released_statistics(source)
        models = self._train_models(trainer, verified, declared, events, released)
        phases["student"] = time.monotonic() - t
        t = time.monotonic()
        covers: dict[str, np.ndarray] = {}
        models |= self._baselines(verified, released, covers)
        phases["evaluation"] = time.monotonic() - t  # the loop adds its round trip's
        main = next(iter(models))
        seen, unseen = declared.seen, declared.unseen
        delivered = delivered_name(self.cfg.deliver, models, covers, seen, unseen)
        saved = {"generator": trainer.generator, "student": models[main]}
        return Learnt(
            models=models,
            saved=saved | {"delivered": models[delivered]},
            delivered=delivered,
            verification=verified.report,
            contributors=contributors,
            phase_seconds=phases,
            history=history,
            method={"name": "azsl", "warm_start": warm} if warm else {},
            baseline={"released": self.released},
            resumed_from_round=resumed,
        )

    def warm_start(
        self, *, grid: Grid, trainer: GeneratorTrainer, declared: ensemble.Declarations
    ) -> tuple[dict[str, object], dict[str, list[int]]]:
        """Before the generator rounds: nothing here (the hybrid, :mod:`strategies.hybrid`,
        fits the generator to DFZSL's virtual features); what results.json's ``method``
        shows of it, and who answered its round trips."""
        return {}, {}

    def _resumable(self) -> bool:
        """A checkpoint of this run's settings will be resumed: its generator is already
        past the warm start (so the warm start's round trips are not spent again)."""
        return self.checkpoint.path.is_file() and self.cfg.resume != "never"

    def _source(
        self, grid: Grid, setup: dict[int, schema.Payload], declared: ensemble.Declarations
    ) -> FeedbackSource:
        """Remote owners (budgets checked before any query), or scenario weights' teachers."""
        settings = SourceSettings.from_config(self.cfg)
        if self.cfg.scenario is Scenario.WEIGHTS:
            num_classes = self.classes.num_classes
            return LocalTeachers.from_setup(
                setup, num_classes, self.device, settings, self.lse_grad
            )
        verify_size = self.cfg.samples_per_class * int(declared.trainable.size)
        self.roster.check_budgets(verify_size, self.cfg.samples_per_class)
        local = local_regularisers(self.cfg, setup, self.device)
        return RemoteOwners(self, self.delivery, grid, settings, verify_size, local)

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
        return history, resumed

    # -- the nearest-class-mean baseline -----------------------------------------------------

    @property
    def released(self) -> str:
        """What the owners' answers in this run's mode release about their class statistics."""
        cfg = self.cfg
        if not regulariser_kind(cfg.regulariser).has_statistics or cfg.regulariser_answer == "none":
            return "none"
        dp = any(
            d.get("mechanisms") and any("statistics" in str(m.get("name")) for m in d["mechanisms"])
            for d in self.privacy.values()
        )  # type: ignore[union-attr]
        kind = "DP statistics" if dp else "exact statistics"
        if cfg.scenario is Scenario.WEIGHTS or cfg.regulariser_answer == "statistics":
            return f"{kind}, sent at set-up"
        if cfg.regulariser_answer != "gradient" or cfg.regulariser not in REVEALED_FITS:
            return "none"  # the value alone needs many crafted queries (see the audit)
        if cfg.scenario is Scenario.BLACKBOX:
            return f"{kind}, recovered from the regulariser gradient (closed-form fit)"
        return f"{kind} mixed with the teacher's gradient (naive closed-form fit)"

    def _fit_released(self, pool: Pool, grad: np.ndarray | None, nodes: list[int]) -> None:
        """Feed the closed-form fit with what this pool's answers revealed (if anything)."""
        if grad is None or "recover" not in self.released and "naive" not in self.released:
            return
        if self._fit is None:
            fit = REVEALED_FITS[self.cfg.regulariser]
            self._fit = fit(self.classes.num_classes, pool.x.shape[1])
        covered = np.unique(np.concatenate([self.roster.covered[n] for n in nodes]))
        self._fit.add(pool.x, pool.labels, grad, self.cfg.alpha, pool.batch_size, covered)

    def _released_statistics(
        self, source: FeedbackSource
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(means, variances, classes) the owners released: sent at set-up (weights,
        statistics), else the closed-form fit of what their gradients revealed, else None."""
        stats = source.released_statistics()
        if stats is None and self._fit is not None:
            mean, var, classes = self._fit.estimate()
            stats = (mean, var, classes) if classes.size else None
        return stats

    def _baselines(
        self,
        verified: Verified,
        released: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        covers: dict[str, np.ndarray],
    ) -> dict[str, torch.nn.Module]:
        """NCM and LDA on the released statistics (if any), NCM on the verified generated
        means; ``covers`` gets each one's classes (what ``deliver=auto`` reads)."""
        num_classes, out = self.classes.num_classes, {}
        if released is not None:
            ncm = ncm_classifier(released[0], released[2], num_classes)
            if ncm is not None:
                out["ncm-released"] = ncm.to(self.device)
                covers["ncm-released"] = released[2]
        out |= self._ncm_generated(verified, covers)  # the rows' order as before
        if released is not None:
            lda = lda_classifier(*released, num_classes)
            if lda is not None:
                out["lda-released"] = lda.to(self.device)
                covers["lda-released"] = released[2]
        return out

    def _ncm_generated(
        self, verified: Verified, covers: dict[str, np.ndarray]
    ) -> dict[str, torch.nn.Module]:
        """NCM on the verified generated class means (none if nothing passed)."""
        keep = verified.keep
        if not keep.any():
            return {}
        num_classes = self.classes.num_classes
        means, classes = class_means(verified.x[keep], verified.y[keep], num_classes)
        model = ncm_classifier(means, classes, num_classes)
        if model is None:
            return {}
        covers["ncm-generated"] = classes
        return {"ncm-generated": model.to(self.device)}

    def _train_models(
        self,
        trainer: GeneratorTrainer,
        verified: Verified,
        declared: ensemble.Declarations,
        events: RunEvents,
        released: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, torch.nn.Module]:
        """Student (Eq. 4); inductive: also classifier C (Eq. 7) on generated unseen samples;
        ``student-loss=ce+kd``: the student-kd candidate (with samples from the ``released``
        Gaussians when ``student-gaussian-samples`` > 0)."""
        keep = verified.keep
        if not keep.any():
            raise RuntimeError(
                "no generated sample passed verification; train longer (rounds) or check alpha"
            )
        unseen = None
        if self.cfg.teacher is TeacherSetting.INDUCTIVE and declared.unseen.size:
            unseen = trainer.generate(declared.unseen, self.cfg.samples_per_class)
        settings = StudentSettings.from_config(self.cfg)
        extra = None
        if settings.gaussian_samples and released is not None:
            extra = gaussian_samples(*released, settings.gaussian_samples, self.cfg.seed)
        return train_models(
            (verified.x[keep], verified.y[keep], verified.probs[keep]),
            unseen,
            declared.num_classes,
            settings,
            self.device,
            events.epoch_done,
            extra,
        )
